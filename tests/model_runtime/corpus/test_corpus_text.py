"""Normalisation, deduplication and split assignment."""

from __future__ import annotations

import unicodedata

import pytest

from model_runtime.corpus.dedup import Deduplicator, near_form, paragraphs
from model_runtime.corpus.splits import assign_split, split_position
from model_runtime.corpus.text import letter_ratio, looks_like_text, normalize_text, unwrap_prose


def test_normalize_text_unicode_and_whitespace() -> None:
    decomposed = unicodedata.normalize("NFD", "café")
    raw = f"\ufeff\n\n{decomposed}\u00a0bar  \r\nline\u200b two\t\n\n\n\n    code\x07\n\n"
    assert normalize_text(raw) == "café bar\nline two\n\n    code"
    assert unicodedata.is_normalized("NFC", normalize_text(decomposed))


def test_unwrap_prose_joins_wrapped_lines_and_keeps_chosen_breaks() -> None:
    wrapped = [
        "A circus foreman was making the rounds inspecting the big top",
        "when a scrawny little man  entered the tent.",
        "Roses are red,",
        "Violets are blue.",
    ]
    assert unwrap_prose(wrapped, min_wrapped_width=50) == (
        "A circus foreman was making the rounds inspecting the big top when a scrawny "
        "little man entered the tent.\nRoses are red,\nViolets are blue."
    )
    assert unwrap_prose(["a", "--b"]) == "a --b"  # width 0: every line joins


def test_quality_filter() -> None:
    assert looks_like_text("Plain words here.", min_chars=10, min_letter_ratio=0.5)
    assert not looks_like_text("short", min_chars=10, min_letter_ratio=0.5)
    art = "  /\\_/\\  \n ( o.o ) \n  > ^ <  \n|||||||||||"
    assert letter_ratio(art) < 0.2
    assert not looks_like_text(art, min_chars=10, min_letter_ratio=0.5)


def test_exact_and_near_duplicates() -> None:
    dedup = Deduplicator()
    assert dedup.check("Hello, World! This is a test.") == "unique"
    assert dedup.check("Hello, World! This is a test.") == "exact"
    assert dedup.check("hello world -- this is a TEST") == "near"
    assert dedup.check("Hello, World! This is another test.") == "unique"
    assert near_form("Hello,  World!") == "hello world"


def test_repeated_paragraphs_are_removed_only_once_remembered() -> None:
    boiler = "This paragraph is boilerplate that appears on many pages of the manual."
    dedup = Deduplicator(min_paragraph_chars=40)
    first = dedup.filter_paragraphs(f"Intro one.\n\n{boiler}\n\n{boiler.upper()}")
    assert first.removed == 1  # a near copy inside the same document
    assert first.text == f"Intro one.\n\n{boiler}"
    again = dedup.filter_paragraphs(f"Intro two.\n\n{boiler}")
    assert again.removed == 0  # the first result was never remembered
    dedup.remember(first.new_keys)
    later = dedup.filter_paragraphs(f"Intro two.\n\n{boiler}")
    assert (later.text, later.removed) == ("Intro two.", 1)


def test_short_paragraphs_and_code_fences_survive_paragraph_dedup() -> None:
    code = "```\nx = 1\n\ny = 2  # a blank line inside the fence\n```"
    assert paragraphs(f"a\n\n{code}\n\nb") == ["a", code, "b"]
    dedup = Deduplicator(min_paragraph_chars=60)
    result = dedup.filter_paragraphs("Note:\n\nNote:")
    assert result.removed == 0


def test_split_is_a_function_of_id_and_salt_only() -> None:
    ids = [f"doc/{n}" for n in range(20_000)]
    first = [assign_split(i) for i in ids]
    assert first == [assign_split(i) for i in reversed(ids)][::-1]
    share = {name: first.count(name) / len(ids) for name in ("train", "valid", "test")}
    assert share["valid"] == pytest.approx(0.01, abs=0.003)
    assert share["test"] == pytest.approx(0.01, abs=0.003)
    salted = [assign_split(i, salt="other") for i in ids]
    assert salted != first
    assert all(assign_split(i, valid_fraction=0, test_fraction=0) == "train" for i in ids[:500])
    assert 0 <= split_position("x") < 1


def test_bad_fractions_are_rejected() -> None:
    with pytest.raises(ValueError, match="fractions"):
        assign_split("x", valid_fraction=0.7, test_fraction=0.5)
