"""The base policy shipped in ``models/base``: what ``make run`` serves from a fresh clone.

Checks the artefact itself (present, verified by its hash, bf16, within the size budget, the
architecture of the model card) and that it behaves as the card says on everyday prompts:
answers in English words that end their turn with ``<|end|>`` and do not loop.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch

from model_runtime.checkpoints import LoadedCheckpoint, load_checkpoint
from model_runtime.generation import generate
from model_runtime.sampling import SamplingParams
from model_runtime.tokenizer import ChatMessage, ChatTokenizer
from model_runtime.topicality import answer_topics, read_topics

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "models" / "base"
RECIPES = ROOT / "configs" / "train"
TOPICS = ROOT / "docs" / "base-model-topics.tsv"
# docs/base-model.md gives the shipped model's figure (0.53); the floor leaves room for answers
# that change with the float rounding of another CPU or thread count (the seeds are fixed)
MIN_ON_TOPIC = 0.4
PROMPTS = (
    "Hello! How are you today?",
    "How do I make a cup of tea?",
    "What is the capital of France?",
    "Tell me something interesting about bees.",
    "What should I pack for a weekend trip?",
    "Can you give me a tip for sleeping better?",
)


@pytest.fixture(scope="module")
def base() -> LoadedCheckpoint:
    return load_checkpoint(BASE)  # verifies size and sha256 of every file first


def test_the_shipped_files_are_a_verified_bf16_checkpoint_within_budget(
    base: LoadedCheckpoint,
) -> None:
    assert sum(path.stat().st_size for path in BASE.iterdir()) <= 50 * 2**20
    assert base.meta["dtype"] == "bfloat16"
    assert 15e6 <= base.meta["num_parameters"] <= 30e6
    config = base.config
    assert (config.vocab_size, config.max_seq_len) == (8192, 512)
    assert base.tokenizer_json is not None
    metrics = base.meta["metrics"]
    assert metrics["stage"] == "sft"
    for stage in ("pretrain", "sft", "sft-2"):
        assert metrics[stage]["held_out_perplexity"] > 1, stage


def test_the_shipped_files_come_from_the_recipe_that_make_base_model_runs(
    base: LoadedCheckpoint,
) -> None:
    """``make base-model`` must rebuild what is shipped: same architecture, and each stage ran
    the steps and tokens its config asks for (a changed recipe without a rebuild fails here)."""
    pretrain = json.loads((RECIPES / "base-pretrain.json").read_text())
    sft = json.loads((RECIPES / "base-sft.json").read_text())
    assistant = json.loads((RECIPES / "base-assistant.json").read_text())
    for key, value in pretrain["model"].items():
        assert getattr(base.config, key) == value, key
    metrics = base.meta["metrics"]
    for stage, recipe in (("pretrain", pretrain), ("sft", sft), ("sft-2", assistant)):
        tokens_per_step = recipe["seq_len"] * recipe["batch_size"] * recipe["grad_accum_steps"]
        assert metrics[stage]["steps"] == recipe["max_steps"], stage
        assert metrics[stage]["tokens_trained"] == recipe["max_steps"] * tokens_per_step, stage


def test_everyday_prompts_get_english_answers_that_end_their_turn(
    base: LoadedCheckpoint,
) -> None:
    tokenizer = ChatTokenizer.from_str(base.tokenizer_json or "")
    prompts = [
        tokenizer.encode_chat([ChatMessage("user", p)], add_generation_prompt=True).ids
        for p in PROMPTS
    ]
    params = SamplingParams(temperature=0.0, repetition_penalty=1.1, max_new_tokens=96)
    with torch.inference_mode():
        results = generate(base.model.float(), tokenizer, prompts, params)
    ended = [r for r in results if r.finish_reason == "stop"]
    assert len(ended) >= len(PROMPTS) - 1, [r.text for r in results]
    for result in results:
        words = re.findall(r"[A-Za-z']+", result.text)
        assert len(words) >= 2, result.text
        assert "<|" not in result.text
        grams = Counter(tuple(words[i : i + 4]) for i in range(len(words) - 3))
        assert not grams or max(grams.values()) <= 2, result.text


def test_answers_to_held_out_questions_stay_on_their_topic(base: LoadedCheckpoint) -> None:
    """Questions the distillation teacher was never asked: the answer must name the thing asked
    about (the build before the assistant tuning managed 0 of 120)."""
    tokenizer = ChatTokenizer.from_str(base.tokenizer_json or "")
    answers = answer_topics(base.model.float(), tokenizer, read_topics(TOPICS))
    rate = sum(answer.on_topic for answer in answers) / len(answers)
    assert rate >= MIN_ON_TOPIC, [(a.question, a.answer) for a in answers if not a.on_topic]
