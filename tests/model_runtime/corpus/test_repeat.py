"""``corpus repeat``: conversations whose answer is the user's own sentence, from the corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_runtime.cli import main
from model_runtime.corpus.repeat import (
    REQUESTS,
    RepeatConfig,
    build_repeat_set,
    prose_sentences,
    repeat_conversations,
    split_sentences,
)

AUSTEN = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be "
    "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
    'surrounding families.\n\nShe was silent. "My dear Mr. Bennet," said his lady to him one '
    'day, "have you heard that Netherfield Park is let at last?"'
)


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    records = [
        {"id": "austen/1", "source": "austen", "text": AUSTEN},
        {
            "id": "python-docs/x",
            "source": "python-docs",
            "text": "The for statement loops over a list of items in order.",
        },
        {
            "id": "fortunes/1",
            "source": "fortunes",
            "text": "A journey of a thousand miles begins with a single step.\n\n"
            "A journey of a thousand miles begins with a single step.",
        },
        {
            "id": "jargon/1",
            "source": "jargon",
            "text": "x = 1; y = 2; z = [x, y] * 3 + {} - () / 4 = 5 = 6 = 7 ok",
        },
    ]
    pretrain = tmp_path / "corpus" / "pretrain"
    pretrain.mkdir(parents=True)
    (pretrain / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path / "corpus"


def test_sentences_come_from_the_prose_sources_once_each_within_the_word_limits(
    corpus_dir: Path,
) -> None:
    sentences = prose_sentences(corpus_dir / "pretrain" / "train.jsonl", min_words=6, max_words=30)
    assert sentences == [
        "It is a truth universally acknowledged, that a single man in possession of a good "
        "fortune, must be in want of a wife.",
        '"My dear Mr. Bennet," said his lady to him one day, "have you heard that Netherfield '
        'Park is let at last?"',
        "A journey of a thousand miles begins with a single step.",
    ]  # the 31-word sentence, "She was silent.", documentation, symbols and the repeat: out


def test_titles_initials_and_abbreviations_do_not_end_a_sentence() -> None:
    text = "I met Mr. Darcy. He was at St. Paul's at 2 p.m. Tuesday. J. R. Smith came! Why? Yes."
    assert split_sentences(text) == [
        "I met Mr. Darcy.",
        "He was at St. Paul's at 2 p.m. Tuesday.",
        "J. R. Smith came!",
        "Why?",
        "Yes.",
    ]


def test_each_answer_is_the_users_sentence_under_one_of_the_requests() -> None:
    sentences = [f"Sentence number {n} is written here for the test." for n in range(50)]
    records = repeat_conversations(sentences, count=40, seed=3)
    assert len(records) == 40
    assert len({r["id"] for r in records}) == 40
    pairs = 0
    for record in records:
        user, assistant = record["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert any(user["content"] == r.format(text=assistant["content"]) for r in REQUESTS)
        pairs += assistant["content"].count("Sentence number") == 2
    assert 0 < pairs < 40
    assert repeat_conversations(sentences, count=40, seed=3) == records  # seeded
    assert len(repeat_conversations(sentences[:5], count=40, seed=3)) == 5


def test_the_set_is_written_split_with_a_manifest_and_through_the_cli(
    corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "repeat"
    manifest = build_repeat_set(RepeatConfig(corpus_dir=corpus_dir, out_dir=out, count=10))
    written = [
        json.loads(line)
        for name in ("train.jsonl", "valid.jsonl")
        for line in (out / name).read_text().splitlines()
    ]
    assert len(written) == 3 == manifest["sentences_available"]
    assert {r["source"] for r in written} == {"repeat"}
    assert (
        manifest["files"]["train.jsonl"]["records"] + manifest["files"]["valid.jsonl"]["records"]
        == 3
    )
    assert json.loads((out / "manifest.json").read_text()) == manifest

    assert main(["corpus", "repeat", "--corpus", str(corpus_dir), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["files"] == manifest["files"]


def test_a_missing_corpus_or_a_bad_count_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["corpus", "repeat", "--corpus", str(tmp_path / "none"), "--out", str(tmp_path)]
    assert main(args) == 2
    assert "build the corpus first" in capsys.readouterr().err
    assert main([*args, "--count", "0"]) == 2
    assert "--count must be >= 1" in capsys.readouterr().err
