"""The held-out topic check of the model card: its file format and its matching rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_runtime.cli import main
from model_runtime.corpus.distill_prompts import STANDALONE, template_questions
from model_runtime.topicality import TopicQuestion, read_topics

TOPICS_FILE = Path(__file__).resolve().parents[2] / "docs" / "base-model-topics.tsv"


def test_a_keyword_matches_as_a_whole_word_or_its_plural_in_any_case() -> None:
    question = TopicQuestion("How do bees make honey?", ("bee", "nectar", "box"))
    assert question.matches("Bees collect it from flowers.")
    assert question.matches("They turn NECTAR into honey.")
    assert question.matches("It is kept in boxes.")
    assert not question.matches("A frisbee is a toy.")  # inside a word
    assert not question.matches("Beef is meat.")  # the start of another word
    assert not question.matches("I like music.")


def test_keywords_are_literal_text_not_patterns() -> None:
    question = TopicQuestion("What is C++?", ("C++",))
    assert question.matches("C++ is a programming language.")
    assert not question.matches("C is older.")


def test_the_file_reads_questions_and_their_words(tmp_path: Path) -> None:
    path = tmp_path / "topics.tsv"
    path.write_text("# comment\n\nWhat is a giraffe?\tgiraffe\nWhy is the sea salty?\tsalt| sea \n")
    assert read_topics(path) == [
        TopicQuestion("What is a giraffe?", ("giraffe",)),
        TopicQuestion("Why is the sea salty?", ("salt", "sea")),
    ]


@pytest.mark.parametrize("line", ["What is a giraffe?", "What is a giraffe?\t", "\tgiraffe"])
def test_a_line_without_question_or_words_is_a_clear_error(tmp_path: Path, line: str) -> None:
    path = tmp_path / "topics.tsv"
    path.write_text(f"# header\n{line}\n")
    with pytest.raises(ValueError, match=r"topics.tsv:2: expected"):
        read_topics(path)


def test_the_model_cards_questions_are_held_out_from_the_distilled_set() -> None:
    """The figure measures answers to questions the teacher was never asked (the chatterbot
    questions of a built corpus are checked by hand: none of them is in the file either)."""
    questions = read_topics(TOPICS_FILE)
    assert len(questions) >= 40
    asked = {text.casefold() for text in (*STANDALONE, *template_questions())}
    assert not [q.question for q in questions if q.question.casefold() in asked]


@pytest.mark.parametrize(
    ("topics", "extra", "message"),
    [
        ("# only a comment\n\n", [], "holds no questions"),
        ("What is jazz?\n", [], "expected 'question<TAB>word|word'"),
        ("What is jazz?\tjazz\n", ["--seeds", "0"], "--seeds must be >= 1"),
    ],
)
def test_the_command_refuses_bad_input_with_one_clear_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    topics: str,
    extra: list[str],
    message: str,
) -> None:
    path = tmp_path / "topics.tsv"
    path.write_text(topics)
    args = ["topicality", "--model", str(tmp_path / "no-model"), "--topics", str(path), *extra]
    assert main(args) == 1
    assert message in capsys.readouterr().err
