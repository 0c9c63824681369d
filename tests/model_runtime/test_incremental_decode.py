"""Streaming decode: never a split character, same text as decoding at once, controls silent."""

from itertools import accumulate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers.pre_tokenizers import ByteLevel

from model_runtime.incremental_decode import BYTE_OF_CHAR, token_string_to_bytes
from model_runtime.tokenizer import ChatTokenizer, train_tokenizer

PROPERTY = settings(max_examples=200, deadline=None)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ChatTokenizer:
    """Merges of multi-byte text, some of which end inside a character (e.g. "日" + 2 bytes)."""
    corpus = tmp_path_factory.mktemp("stream") / "corpus.txt"
    corpus.write_text("the cat sat on the mat. 日本語 😀 éé " * 20, encoding="utf-8")
    return train_tokenizer([corpus], 300)


@pytest.fixture(scope="module")
def ascii_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ChatTokenizer:
    """Merges of ASCII only: every non-ASCII character is spread over one token per byte."""
    corpus = tmp_path_factory.mktemp("ascii") / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 20, encoding="utf-8")
    return train_tokenizer([corpus], 300)


def pieces_of(tokenizer: ChatTokenizer, ids: list[int]) -> list[str]:
    decoder = tokenizer.incremental_decoder()
    return [decoder.push(token_id) for token_id in ids] + [decoder.flush()]


def test_byte_level_alphabet_matches_the_library() -> None:
    assert set(BYTE_OF_CHAR) == set(ByteLevel.alphabet())
    assert sorted(BYTE_OF_CHAR.values()) == list(range(256))
    assert token_string_to_bytes("Ġhello") == b" hello"
    assert token_string_to_bytes("Ċ") == b"\n"
    with pytest.raises(ValueError, match="outside the byte-level alphabet"):
        token_string_to_bytes("Ġ日")


def test_multi_byte_characters_wait_for_their_last_byte(ascii_tokenizer: ChatTokenizer) -> None:
    text = "a🐍é語"  # 1 + 4 + 2 + 3 bytes
    ids = ascii_tokenizer.encode_text(text)
    assert len(ids) == 10  # one token per byte
    assert pieces_of(ascii_tokenizer, ids) == ["a", "", "", "", "🐍", "", "é", "", "", "語", ""]


def test_tokens_that_cross_character_boundaries(tokenizer: ChatTokenizer) -> None:
    text = "日本語日本"
    ids = tokenizer.encode_text(text)
    token_ends = list(accumulate(len(tokenizer.token_bytes(token_id)) for token_id in ids))
    character_ends = set(accumulate(len(char.encode()) for char in text))
    assert not set(token_ends) <= character_ends  # some token ends inside a character
    pieces = pieces_of(tokenizer, ids)
    assert "".join(pieces) == text
    # Each push shows exactly the characters whose last byte has arrived.
    shown = list(accumulate(len(piece.encode()) for piece in pieces[:-1]))
    assert shown == [max(e for e in character_ends | {0} if e <= end) for end in token_ends]


@PROPERTY
@given(st.text())
def test_pieces_are_whole_characters_of_the_text(tokenizer: ChatTokenizer, text: str) -> None:
    ids = tokenizer.encode_text(text)
    decoder = tokenizer.incremental_decoder()
    emitted, data = "", b""
    for token_id in ids:
        emitted += decoder.push(token_id)
        data += tokenizer.token_bytes(token_id)
        # Exactly the complete characters so far: the bytes minus an unfinished last character.
        assert emitted == data.decode("utf-8", errors="ignore")
    assert decoder.flush() == ""
    assert emitted == text


@PROPERTY
@given(st.data())
def test_pieces_join_to_decode_for_any_ids(tokenizer: ChatTokenizer, data: st.DataObject) -> None:
    # Arbitrary ids, control ids and invalid UTF-8 included.
    ids = data.draw(st.lists(st.integers(0, tokenizer.vocab_size - 1), max_size=40))
    assert "".join(pieces_of(tokenizer, ids)) == tokenizer.decode(ids)


def test_control_ids_yield_nothing(ascii_tokenizer: ChatTokenizer) -> None:
    tokenizer = ascii_tokenizer
    assert pieces_of(tokenizer, sorted(tokenizer.control_ids)) == [""] * 7
    snake = tokenizer.encode_text("🐍")
    # A control id between the bytes of a character neither shows nor breaks it, as in decode.
    ids = [*snake[:2], tokenizer.end_id, *snake[2:], tokenizer.eos_id]
    assert pieces_of(tokenizer, ids) == ["", "", "", "", "🐍", "", ""]
    assert tokenizer.decode(ids) == "🐍"


def test_flush_ends_an_unfinished_character_and_resets(ascii_tokenizer: ChatTokenizer) -> None:
    snake = ascii_tokenizer.encode_text("🐍")
    decoder = ascii_tokenizer.incremental_decoder()
    assert [decoder.push(i) for i in snake[:3]] == ["", "", ""]
    assert decoder.flush() == "\ufffd"
    assert [decoder.push(i) for i in snake] == ["", "", "", "🐍"]
    assert decoder.flush() == ""


def test_push_rejects_unknown_ids(tokenizer: ChatTokenizer) -> None:
    decoder = tokenizer.incremental_decoder()
    for bad in (-1, tokenizer.vocab_size):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            decoder.push(bad)
