"""Chat template: exact layout, assistant mask, generation prompt, role checks."""

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_runtime.tokenizer import (
    SPECIAL_TOKENS,
    ChatEncoding,
    ChatMessage,
    ChatTokenizer,
    train_tokenizer,
)

SYSTEM, USER, ASSISTANT, END = 2, 3, 4, 5


@pytest.fixture(scope="module")
def hi_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ChatTokenizer:
    """One merge: "hi" = 262; "h" = 77, "i" = 78, "Ġ" (space) = 226 (see test_tokenizer.py)."""
    corpus = tmp_path_factory.mktemp("hi") / "hi.txt"
    corpus.write_text("hi hi hi hi", encoding="utf-8")
    tokenizer = train_tokenizer([corpus], 263)
    assert tokenizer.encode_text("hi hi") == [262, 226, 262]
    return tokenizer


def test_hand_worked_layout_and_mask(hi_tokenizer: ChatTokenizer) -> None:
    messages = [
        ChatMessage("system", "hi"),
        ChatMessage("user", "hi hi"),
        ChatMessage("assistant", "ih"),
    ]
    encoding = hi_tokenizer.encode_chat(messages, add_generation_prompt=False)
    assert encoding.ids == [SYSTEM, 262, END, USER, 262, 226, 262, END, ASSISTANT, 78, 77, END]
    assert encoding.assistant_mask == [False] * 9 + [True, True, True]


def test_generation_prompt_opens_an_assistant_turn(hi_tokenizer: ChatTokenizer) -> None:
    messages = [
        ChatMessage("user", "hi"),
        ChatMessage("assistant", "hi"),
        ChatMessage("user", "h"),
    ]
    prompt = hi_tokenizer.encode_chat(messages, add_generation_prompt=True)
    assert prompt.ids == [USER, 262, END, ASSISTANT, 262, END, USER, 77, END, ASSISTANT]
    assert prompt.assistant_mask == [False] * 4 + [True, True] + [False] * 4
    plain = hi_tokenizer.encode_chat(messages, add_generation_prompt=False)
    assert plain.ids == prompt.ids[:-1]
    assert hi_tokenizer.encode_chat([], add_generation_prompt=True).ids == [ASSISTANT]
    assert hi_tokenizer.encode_chat([], add_generation_prompt=False) == ChatEncoding([], [])


def test_empty_content_still_gets_its_end(hi_tokenizer: ChatTokenizer) -> None:
    encoding = hi_tokenizer.encode_chat(
        [ChatMessage("user", ""), ChatMessage("assistant", "")], add_generation_prompt=False
    )
    assert encoding.ids == [USER, END, ASSISTANT, END]
    assert encoding.assistant_mask == [False, False, False, True]


def test_unknown_roles_are_rejected(hi_tokenizer: ChatTokenizer) -> None:
    with pytest.raises(
        ValueError, match=r"unknown chat role 'tool'.*'system', 'user', 'assistant'"
    ):
        ChatMessage("tool", "x")  # type: ignore[arg-type]
    smuggled = ChatMessage("user", "x")
    object.__setattr__(smuggled, "role", "<|assistant|>")  # bypasses __post_init__
    with pytest.raises(ValueError, match=r"message 1: unknown chat role '<\|assistant\|>'"):
        hi_tokenizer.encode_chat([ChatMessage("user", "hi"), smuggled], add_generation_prompt=True)


def test_message_and_encoding_check_their_fields() -> None:
    with pytest.raises(TypeError, match="must be str"):
        ChatMessage("user", None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="same length"):
        ChatEncoding(ids=[1, 2], assistant_mask=[True])


CONTENT = st.lists(
    st.one_of(
        st.sampled_from(SPECIAL_TOKENS),
        st.sampled_from(
            ["<|", "|>", "\uff1c\uff5cassistant\uff5c\uff1e", "<|end\u200b|>", "user", "\n"]
        ),
        st.text(max_size=8),
    ),
    max_size=6,
).map("".join)
MESSAGES = st.lists(
    st.builds(ChatMessage, st.sampled_from(["system", "user", "assistant"]), CONTENT),
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(MESSAGES, st.booleans())
def test_controls_come_only_from_the_template(
    hi_tokenizer: ChatTokenizer, messages: list[ChatMessage], add_generation_prompt: bool
) -> None:
    encoding = hi_tokenizer.encode_chat(messages, add_generation_prompt=add_generation_prompt)
    headers = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
    expected_ids: list[int] = []
    expected_mask: list[bool] = []
    for message in messages:
        content = hi_tokenizer.encode_text(message.content)
        expected_ids += [headers[message.role], *content, END]
        expected_mask += [False] + [message.role == "assistant"] * (len(content) + 1)
    if add_generation_prompt:
        expected_ids.append(ASSISTANT)
        expected_mask.append(False)
    assert encoding.ids == expected_ids
    assert encoding.assistant_mask == expected_mask
    controls = [i for i in encoding.ids if i in hi_tokenizer.control_ids]
    assert len(controls) == 2 * len(messages) + add_generation_prompt
    assert hi_tokenizer.decode(encoding.ids) == "".join(m.content for m in messages)


def test_save_then_chat_encodings_match(hi_tokenizer: ChatTokenizer, tmp_path: Path) -> None:
    loaded = ChatTokenizer.from_file(hi_tokenizer.save(tmp_path))
    messages = [ChatMessage("user", "hi <|end|>"), ChatMessage("assistant", "hi")]
    assert loaded.encode_chat(messages, add_generation_prompt=True) == hi_tokenizer.encode_chat(
        messages, add_generation_prompt=True
    )
