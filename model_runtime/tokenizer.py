"""The palmloop tokenizer: byte-level BPE (HF `tokenizers`) with chat control tokens added by id.

Ids 0..5 are the control tokens of SPECIAL_TOKENS, in that order; every other id is an ordinary
byte-level BPE token, and the 256 single-byte tokens are always in the vocabulary, so any text is
representable (no unknown token, no byte fallback).

Text (user, system and assistant alike) is encoded with special-token parsing off: a text that
spells "<|assistant|>", "<|end|>" or "<pad>" is encoded as the ordinary tokens of those characters,
never as a control id. (HF `tokenizers` matches added tokens in the input even with
`add_special_tokens=False`; we switch that matching off with `encode_special_tokens = True`, and
refuse tokenizer files whose BPE merges could spell a control token.) Control ids enter a sequence
only through `encode_chat`, and decoding drops them.

Round trip: `decode(encode_text(s)) == s` for every string of Unicode scalar values, i.e. every
string that UTF-8 can encode. Python strings may also hold lone surrogates (e.g. from JSON "\\ud800"
escapes); UTF-8 cannot, so `encode_text` encodes each of them as U+FFFD.
"""

import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from model_runtime.chat_template import (
    ChatEncoding,
    ChatMessage,
    build_chat_encoding,
)
from model_runtime.incremental_decode import (
    BYTE_OF_CHAR,
    IncrementalDecoder,
    decode_ids,
    token_string_to_bytes,
)

__all__ = [
    "SPECIAL_TOKENS",
    "TOKENIZER_FILENAME",
    "ChatEncoding",
    "ChatMessage",
    "ChatTokenizer",
    "IncrementalDecoder",
    "TokenizerFormatError",
    "train_tokenizer",
]

SPECIAL_TOKENS = ("<pad>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
TOKENIZER_FILENAME = "tokenizer.json"
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + len(BYTE_OF_CHAR)  # 262: controls + one token per byte

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class TokenizerFormatError(ValueError):
    """A tokenizer.json that is not a palmloop byte-level BPE chat tokenizer."""


def tokenizer_file(path: Path) -> Path:
    """The tokenizer.json a path names: the file itself, or the one inside a directory."""
    path = Path(path)
    return path / TOKENIZER_FILENAME if path.is_dir() else path


class ChatTokenizer:
    """Byte-level BPE with the chat control tokens of SPECIAL_TOKENS at ids 0..5.

    Build one with `train_tokenizer`, `from_file` or `from_str`; the constructor takes an HF
    `tokenizers.Tokenizer` (copied, not modified) and raises TokenizerFormatError unless it has
    the layout described in the module docstring.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        json_text = tokenizer.to_str()
        self._token_bytes = _check_format(json.loads(json_text))
        self._tokenizer = Tokenizer.from_str(json_text)
        # Added tokens are all special (checked above); this stops the added-token matcher from
        # finding them in input text, so only pre-tokenizer + BPE model see the text.
        self._tokenizer.encode_special_tokens = True
        self.pad_id = SPECIAL_TOKENS.index("<pad>")
        self.eos_id = SPECIAL_TOKENS.index("<|endoftext|>")
        self.system_id = SPECIAL_TOKENS.index("<|system|>")
        self.user_id = SPECIAL_TOKENS.index("<|user|>")
        self.assistant_id = SPECIAL_TOKENS.index("<|assistant|>")
        self.end_id = SPECIAL_TOKENS.index("<|end|>")
        self.control_ids: frozenset[int] = frozenset(range(len(SPECIAL_TOKENS)))
        # A model may end its turn (<|end|>, <|endoftext|>) but never open a turn of its own,
        # speak for the user or the system, or emit padding: generation never draws these.
        self.never_generated_ids: frozenset[int] = frozenset(
            {self.pad_id, self.system_id, self.user_id, self.assistant_id}
        )
        self._role_ids = {
            "system": self.system_id,
            "user": self.user_id,
            "assistant": self.assistant_id,
        }

    @classmethod
    def from_str(cls, json_text: str) -> "ChatTokenizer":
        """Load from the text of a tokenizer.json (as written by `to_str`)."""
        try:
            tokenizer = Tokenizer.from_str(json_text)
        except Exception as error:  # the Rust side raises plain Exception
            raise TokenizerFormatError(f"not a valid tokenizer.json: {error}") from error
        return cls(tokenizer)

    @classmethod
    def from_file(cls, path: Path) -> "ChatTokenizer":
        """Load a tokenizer.json file, or `path / "tokenizer.json"` when `path` is a directory."""
        return cls.from_str(tokenizer_file(path).read_text(encoding="utf-8"))

    def to_str(self) -> str:
        """The tokenizer.json text; `from_str` of it gives a tokenizer with identical encodings."""
        return self._tokenizer.to_str()

    def save(self, path: Path) -> Path:
        """Write tokenizer.json atomically and return the path written.

        A `path` ending in ".json" that is not an existing directory is the file to write;
        otherwise `path` is a directory (created if missing) and the file is
        `path / "tokenizer.json"`.
        """
        path = Path(path)
        if path.suffix != ".json" or path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            path = path / TOKENIZER_FILENAME
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(self.to_str())
            os.chmod(staging, 0o644)  # mkstemp makes 0600; other processes read checkpoints
            os.replace(staging, path)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
        return path

    @property
    def vocab_size(self) -> int:
        """Number of ids, control ids included; ids are 0..vocab_size-1."""
        return len(self._token_bytes)

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary string of an id (byte-level spelling, e.g. "Ġthe" for " the")."""
        self._check_id(token_id)
        token = self._tokenizer.id_to_token(token_id)
        assert token is not None  # every id in [0, vocab_size) has a token (_check_format)
        return token

    def token_to_id(self, token: str) -> int | None:
        """The id of a vocabulary string (byte-level spelling), or None if it is not one."""
        return self._tokenizer.token_to_id(token)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes an id adds to decoded text (b"" for control ids)."""
        self._check_id(token_id)
        return self._token_bytes[token_id]

    def _check_id(self, token_id: int) -> None:
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(
                f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})"
            )

    def encode_text(self, text: str) -> list[int]:
        """Ids of `text` with special-token parsing off: never a control id."""
        return list(self._tokenizer.encode(_scalar_values(text), add_special_tokens=False).ids)

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode_text` of each text, encoded as one (parallel) batch."""
        encodings = self._tokenizer.encode_batch(
            [_scalar_values(text) for text in texts], add_special_tokens=False
        )
        return [list(encoding.ids) for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; control ids are dropped, invalid UTF-8 becomes U+FFFD.

        Raises ValueError for an id outside [0, vocab_size).
        """
        return decode_ids(self._token_bytes, ids)

    def incremental_decoder(self) -> IncrementalDecoder:
        """A streaming decoder: `.push(id) -> str` never splits a character, `.flush() -> str`."""
        return IncrementalDecoder(self._token_bytes)

    def encode_chat(
        self, messages: Sequence[ChatMessage], *, add_generation_prompt: bool
    ) -> ChatEncoding:
        """Ids and assistant mask of a conversation; see `model_runtime.chat_template`.

        Raises ValueError for a message with an unknown role.
        """
        return build_chat_encoding(
            messages,
            encode_texts=self.encode_texts,
            role_ids=self._role_ids,
            end_id=self.end_id,
            add_generation_prompt=add_generation_prompt,
        )

    def __repr__(self) -> str:
        return f"ChatTokenizer(vocab_size={self.vocab_size})"


def train_tokenizer(
    files: Sequence[Path], vocab_size: int, *, min_frequency: int = 2
) -> ChatTokenizer:
    """Train byte-level BPE on UTF-8 text files.

    The result has at most `vocab_size` ids (fewer when the text offers fewer pairs seen
    `min_frequency` times): the control tokens at 0..5, the 256 byte tokens, then the merges.
    """
    if not files:
        raise ValueError("train_tokenizer needs at least one text file")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE}, got {vocab_size}")
    for file in files:
        if not Path(file).is_file():
            raise FileNotFoundError(f"tokenizer training file not found: {file}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([str(file) for file in files], trainer)
    return ChatTokenizer(tokenizer)


def _scalar_values(text: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}")
    if text.isascii():
        return text
    return _LONE_SURROGATE.sub("\N{REPLACEMENT CHARACTER}", text)


def _check_format(spec: dict[str, Any]) -> tuple[bytes, ...]:
    """Check a parsed tokenizer.json; return the bytes of each id (b"" for control ids)."""

    def require(condition: bool, what: str) -> None:
        if not condition:
            raise TokenizerFormatError(f"tokenizer.json: {what}")

    require(spec.get("normalizer") is None, "must have no normalizer")
    require(spec.get("truncation") is None, "must not truncate")
    require(spec.get("padding") is None, "must not pad")
    pre = spec.get("pre_tokenizer") or {}
    require(
        pre.get("type") == "ByteLevel"
        and pre.get("add_prefix_space") is False
        and pre.get("use_regex") is True,
        "pre_tokenizer must be ByteLevel(add_prefix_space=False, use_regex=True)",
    )
    require((spec.get("decoder") or {}).get("type") == "ByteLevel", "decoder must be ByteLevel")
    post = spec.get("post_processor")
    require(post is None or post.get("type") == "ByteLevel", "post_processor must be ByteLevel")

    model = spec.get("model") or {}
    require(model.get("type") == "BPE", "model must be BPE")
    require(model.get("dropout") is None, "BPE dropout must be off")
    require(model.get("unk_token") is None, "byte-level BPE has no unknown token")
    require(not model.get("byte_fallback"), "byte_fallback must be off")
    require(
        not model.get("continuing_subword_prefix") and not model.get("end_of_word_suffix"),
        "BPE must have no subword prefix or suffix",
    )

    added = spec.get("added_tokens") or []
    require(
        [(token.get("id"), token.get("content"), token.get("special")) for token in added]
        == [(index, content, True) for index, content in enumerate(SPECIAL_TOKENS)],
        f"added tokens must be exactly the special tokens {SPECIAL_TOKENS} at ids 0..5",
    )

    vocab: dict[str, int] = model.get("vocab") or {}
    require(sorted(vocab.values()) == list(range(len(vocab))), "vocab ids must be 0..n-1")
    for index, content in enumerate(SPECIAL_TOKENS):
        require(vocab.get(content) == index, f"vocab must map {content!r} to id {index}")
    require(all(char in vocab for char in BYTE_OF_CHAR), "vocab must hold all 256 byte tokens")
    for merge in model.get("merges") or []:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        require(left + right not in SPECIAL_TOKENS, f"merge {merge!r} spells a control token")

    token_bytes = [b""] * len(vocab)
    for token, token_id in vocab.items():
        if token_id >= len(SPECIAL_TOKENS):
            try:
                token_bytes[token_id] = token_string_to_bytes(token)
            except ValueError as error:
                raise TokenizerFormatError(f"tokenizer.json: {error}") from None
    return tuple(token_bytes)
