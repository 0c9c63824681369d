"""Byte-level BPE chat tokenizer: training, injection safety, round trips, file format."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, normalizers

from model_runtime.tokenizer import (
    SPECIAL_TOKENS,
    ChatTokenizer,
    TokenizerFormatError,
    train_tokenizer,
)

PROPERTY = settings(max_examples=200, deadline=None)

# Chat-like text that spells the control tokens, so BPE learns merges such as "<|" and "|>".
CORPUS = (
    "The quick brown fox jumps over the lazy dog. def encode(text): return text.split()\n"
    "<|user|> hello there <|end|> <|assistant|> hi! how can I help? <|end|> <pad><pad>\n"
    "Unicode: naïve café, 日本語のテキスト, Ελληνικά, emoji 😀🎉👍🏽 and "
    "\uff46\uff55\uff4c\uff4c (full width).\n"
) * 30


def train_on(tmp_path: Path, texts: list[str], vocab_size: int) -> ChatTokenizer:
    files = []
    for index, text in enumerate(texts):
        file = tmp_path / f"corpus_{index}.txt"
        file.write_text(text, encoding="utf-8")
        files.append(file)
    return train_tokenizer(files, vocab_size)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ChatTokenizer:
    return train_on(tmp_path_factory.mktemp("corpus"), [CORPUS], 400)


FW_LT, FW_BAR, FW_GT = "\uff1c", "\uff5c", "\uff1e"  # full-width "<", "|", ">"


def _variants(token: str) -> list[str]:
    inner = token.strip("<>|")
    return [
        token,
        token.upper(),
        token[:-1],  # "<|user|"
        token[1:],  # "|user|>"
        token[: len(token) // 2],  # "<|us"
        f"<| {inner} |>",
        f"<{inner}>",
        f"{FW_LT}{FW_BAR}{inner}{FW_BAR}{FW_GT}",
        f"<{FW_BAR}{inner}{FW_BAR}>",
        f"\N{SINGLE LEFT-POINTING ANGLE QUOTATION MARK}|{inner}|"
        "\N{SINGLE RIGHT-POINTING ANGLE QUOTATION MARK}",
    ]


ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]
SPELLINGS = sorted({variant for token in SPECIAL_TOKENS for variant in _variants(token)})


@st.composite
def zero_width_inside(draw: st.DrawFn) -> str:
    """A control-token spelling with zero-width characters inserted at random places."""
    text = draw(st.sampled_from(SPECIAL_TOKENS))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(ZERO_WIDTH)) + text[at:]
    return text


ADVERSARIAL_TEXT = st.lists(
    st.one_of(
        st.sampled_from(SPECIAL_TOKENS),
        st.sampled_from(SPELLINGS),
        st.sampled_from(["<", "|", ">", "<|", "|>", FW_LT, FW_BAR, FW_GT, " ", "\n", "\x00"]),
        zero_width_inside(),
        st.text(max_size=12),
    ),
    max_size=12,
).map("".join)
ANY_TEXT = st.one_of(st.text(), ADVERSARIAL_TEXT)


def test_control_tokens_are_ids_0_to_5(tokenizer: ChatTokenizer) -> None:
    assert [tokenizer.id_to_token(i) for i in range(6)] == list(SPECIAL_TOKENS)
    assert [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS] == list(range(6))
    assert [
        tokenizer.pad_id,
        tokenizer.eos_id,
        tokenizer.system_id,
        tokenizer.user_id,
        tokenizer.assistant_id,
        tokenizer.end_id,
    ] == [0, 1, 2, 3, 4, 5]
    assert tokenizer.control_ids == frozenset(range(6))
    assert 262 < tokenizer.vocab_size <= 400  # it learned merges, within the budget


@pytest.mark.parametrize("vocab_size", [300, 500])
def test_train_on_several_files_keeps_the_budget(tmp_path: Path, vocab_size: int) -> None:
    halves = [CORPUS[: len(CORPUS) // 2], CORPUS[len(CORPUS) // 2 :], "héllo wörld " * 50]
    trained = train_on(tmp_path, halves, vocab_size)
    assert trained.vocab_size <= vocab_size
    assert [trained.id_to_token(i) for i in range(6)] == list(SPECIAL_TOKENS)
    text = "any byte \x00\x7f\u0085 even ones never seen in training: ☃ 𝄞"
    assert trained.decode(trained.encode_text(text)) == text


def test_train_hand_worked_merge(tmp_path: Path) -> None:
    # Words of "hi hi hi hi": "hi" once, "Ġhi" three times (Ġ spells the space byte).
    # Pair counts: (h, i) 4, (Ġ, h) 3, so a budget of one merge learns "hi" -> id 262.
    # Byte tokens follow the controls sorted by character: "!" is id 6, "h" = 6 + 104 - 33 = 77,
    # and "Ġ" (U+0120) comes after the 188 visible bytes: 6 + 188 + (0x120 - 0x100) = 226.
    trained = train_on(tmp_path, ["hi hi hi hi"], 263)
    assert trained.vocab_size == 263
    assert trained.id_to_token(262) == "hi"
    assert trained.encode_text("hi hi") == [262, 226, 262]
    assert trained.encode_text("ih!") == [78, 77, 6]
    assert trained.token_bytes(226) == b" "


def test_train_rejects_bad_arguments(tmp_path: Path) -> None:
    corpus = tmp_path / "a.txt"
    corpus.write_text("some text", encoding="utf-8")
    with pytest.raises(ValueError, match="at least 262"):
        train_tokenizer([corpus], 261)
    with pytest.raises(ValueError, match="at least one"):
        train_tokenizer([], 300)
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        train_tokenizer([corpus, tmp_path / "missing.txt"], 300)


@PROPERTY
@given(ANY_TEXT)
def test_text_never_encodes_to_a_control_id_and_round_trips(
    tokenizer: ChatTokenizer, text: str
) -> None:
    ids = tokenizer.encode_text(text)
    assert tokenizer.control_ids.isdisjoint(ids)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text


@PROPERTY
@given(ANY_TEXT)
def test_encoding_is_pre_tokenizer_plus_bpe_only(tokenizer: ChatTokenizer, text: str) -> None:
    # Oracle that never runs the added-token matcher: byte-level split, then the BPE model.
    raw = Tokenizer.from_str(tokenizer.to_str())
    expected = [
        token.id
        for piece, _ in raw.pre_tokenizer.pre_tokenize_str(text)
        for token in raw.model.tokenize(piece)
    ]
    assert tokenizer.encode_text(text) == expected


@pytest.mark.parametrize("spelling", [*SPECIAL_TOKENS, *SPELLINGS])
def test_each_control_spelling_is_plain_text(tokenizer: ChatTokenizer, spelling: str) -> None:
    for text in (spelling, f"x{spelling}y", f" {spelling} ", spelling * 3):
        ids = tokenizer.encode_text(text)
        assert tokenizer.control_ids.isdisjoint(ids), text
        assert tokenizer.decode(ids) == text
    assert len(tokenizer.encode_text(spelling)) > 1


def test_encode_texts_matches_encode_text(tokenizer: ChatTokenizer) -> None:
    texts = ["", "hello", "<|end|>", "日本語 😀", " \n\t"]
    assert tokenizer.encode_texts(texts) == [tokenizer.encode_text(text) for text in texts]
    assert tokenizer.encode_text("") == []


def test_lone_surrogates_encode_as_replacement_character(tokenizer: ChatTokenizer) -> None:
    ids = tokenizer.encode_text("a\ud800b\udfffc")
    assert ids == tokenizer.encode_text("a\ufffdb\ufffdc")
    assert tokenizer.decode(ids) == "a\ufffdb\ufffdc"


def test_encode_text_rejects_non_strings(tokenizer: ChatTokenizer) -> None:
    with pytest.raises(TypeError, match="bytes"):
        tokenizer.encode_text(b"hi")  # type: ignore[arg-type]


def test_decode_drops_control_ids_and_rejects_unknown_ids(tokenizer: ChatTokenizer) -> None:
    hi = tokenizer.encode_text("hi")
    assert tokenizer.decode([3, *hi, 5, 0, 1, 2, 4]) == "hi"
    assert tokenizer.decode(list(range(6))) == ""
    for bad in (-1, tokenizer.vocab_size):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tokenizer.decode([*hi, bad])
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tokenizer.id_to_token(bad)


@PROPERTY
@given(st.data())
def test_decode_matches_the_library_decoder(tokenizer: ChatTokenizer, data: st.DataObject) -> None:
    # Our decode reads bytes from our own alphabet table; the library's ByteLevel decoder agrees,
    # invalid UTF-8 included (both replace each maximal invalid subpart by one U+FFFD).
    ids = data.draw(st.lists(st.integers(0, tokenizer.vocab_size - 1), max_size=30))
    raw = Tokenizer.from_str(tokenizer.to_str())
    assert tokenizer.decode(ids) == raw.decode(ids, skip_special_tokens=True)


def test_save_load_round_trip(tokenizer: ChatTokenizer, tmp_path: Path) -> None:
    written_dir = tokenizer.save(tmp_path / "checkpoint")
    written_file = tokenizer.save(tmp_path / "elsewhere" / "custom.json")
    assert written_dir == tmp_path / "checkpoint" / "tokenizer.json"
    assert written_file == tmp_path / "elsewhere" / "custom.json"
    assert sorted(path.name for path in (tmp_path / "checkpoint").iterdir()) == ["tokenizer.json"]
    loaded = [
        ChatTokenizer.from_file(tmp_path / "checkpoint"),
        ChatTokenizer.from_file(written_dir),
        ChatTokenizer.from_file(written_file),
        ChatTokenizer.from_str(tokenizer.to_str()),
    ]
    texts = [
        CORPUS[:500],
        f"<|user|> 😀 {FW_LT}{FW_BAR}end{FW_BAR}{FW_GT}",
        "\x00\u200b<pad>",
        "日本語",
    ]
    for other in loaded:
        assert other.vocab_size == tokenizer.vocab_size
        assert other.to_str() == tokenizer.to_str()
        assert other.encode_texts(texts) == tokenizer.encode_texts(texts)


def _edited(tokenizer: ChatTokenizer, edit: str) -> str:
    spec = json.loads(tokenizer.to_str())
    if edit == "extra added token":
        spec["added_tokens"].append({**spec["added_tokens"][-1], "id": 6, "content": "!"})
    elif edit == "added token not special":
        spec["added_tokens"][4]["special"] = False
    elif edit == "controls out of order":
        added, vocab = spec["added_tokens"], spec["model"]["vocab"]
        added[3]["content"], added[4]["content"] = "<|assistant|>", "<|user|>"
        vocab["<|assistant|>"], vocab["<|user|>"] = 3, 4
    elif edit == "prefix space":
        spec["pre_tokenizer"]["add_prefix_space"] = True
    elif edit == "truncation":
        spec["truncation"] = {"direction": "Right", "max_length": 8, "strategy": "LongestFirst"}
        spec["truncation"]["stride"] = 0
    elif edit == "dropout":
        spec["model"]["dropout"] = 0.1
    elif edit == "merge spells a control token":
        vocab = spec["model"]["vocab"]
        vocab["<|end|"] = len(vocab)
        spec["model"]["merges"].append(["<|end|", ">"])
    return json.dumps(spec)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("extra added token", "added tokens must be exactly"),
        ("added token not special", "added tokens must be exactly"),
        ("controls out of order", "added tokens must be exactly"),
        ("prefix space", "add_prefix_space=False"),
        ("truncation", "must not truncate"),
        ("dropout", "dropout"),
        ("merge spells a control token", "spells a control token"),
    ],
)
def test_from_str_rejects_other_layouts(tokenizer: ChatTokenizer, edit: str, message: str) -> None:
    with pytest.raises(TokenizerFormatError, match=message):
        ChatTokenizer.from_str(_edited(tokenizer, edit))


def test_from_str_rejects_invalid_json_and_normalizers(tokenizer: ChatTokenizer) -> None:
    with pytest.raises(TokenizerFormatError, match=r"not a valid tokenizer\.json"):
        ChatTokenizer.from_str("{not json")
    raw = Tokenizer.from_str(tokenizer.to_str())
    raw.normalizer = normalizers.NFKC()  # would fold full-width "<|end|>" into ASCII
    with pytest.raises(TokenizerFormatError, match="no normalizer"):
        ChatTokenizer(raw)


def test_constructor_leaves_the_given_tokenizer_alone(tokenizer: ChatTokenizer) -> None:
    raw = Tokenizer.from_str(tokenizer.to_str())
    ChatTokenizer(raw)
    assert raw.encode_special_tokens is False
