"""The chat template: messages -> token ids, with control tokens inserted by id only.

Layout, one block per message in the given order:

    <|system|> text <|end|>  <|user|> text <|end|>  <|assistant|> text <|end|>  ...

and, with `add_generation_prompt`, a final `<|assistant|>` that opens the turn the model is to
write. The text of every message is encoded by a text encoder that never produces control ids
(special-token parsing off), so the control ids in the result are exactly the ones placed here.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = get_args(Role)


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation. ValueError for a role outside ROLES."""

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown chat role {self.role!r}; expected one of {ROLES}")
        if not isinstance(self.content, str):
            raise TypeError(f"message content must be str, not {type(self.content).__name__}")


@dataclass(frozen=True)
class ChatEncoding:
    """Token ids of a conversation and, per id, whether it belongs to an assistant turn.

    `assistant_mask[i]` is True for the ids of assistant text and for the `<|end|>` closing that
    assistant turn (what the model must learn to emit); False for control headers and for the
    other roles' ids. Both lists have length T.
    """

    ids: list[int]
    assistant_mask: list[bool]

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.assistant_mask):
            raise ValueError(
                f"ids ({len(self.ids)}) and assistant_mask ({len(self.assistant_mask)}) "
                "must have the same length"
            )


def build_chat_encoding(
    messages: Sequence[ChatMessage],
    *,
    encode_texts: Callable[[Sequence[str]], list[list[int]]],
    role_ids: Mapping[str, int],
    end_id: int,
    add_generation_prompt: bool,
) -> ChatEncoding:
    """Lay out `messages` as in the module docstring.

    `encode_texts` maps each content string to its ids and must never return a control id;
    `role_ids` gives the header id of each role ("system", "user", "assistant").
    Raises ValueError for a message whose role has no header id.
    """
    headers: list[int] = []
    for index, message in enumerate(messages):
        header = role_ids.get(message.role)
        if header is None:
            raise ValueError(
                f"message {index}: unknown chat role {message.role!r}; expected one of {ROLES}"
            )
        headers.append(header)

    contents = encode_texts([message.content for message in messages])
    ids: list[int] = []
    mask: list[bool] = []
    for message, header, content in zip(messages, headers, contents, strict=True):
        is_assistant = message.role == "assistant"
        ids.append(header)
        mask.append(False)
        ids.extend(content)
        ids.append(end_id)
        mask.extend([is_assistant] * (len(content) + 1))
    if add_generation_prompt:
        ids.append(role_ids["assistant"])
        mask.append(False)
    return ChatEncoding(ids=ids, assistant_mask=mask)
