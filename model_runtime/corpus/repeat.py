"""``corpus repeat``: "say this back to me" conversations made of the corpus's own sentences.

A small model trained on a few million tokens has not yet learnt to copy from its context (its
loss on a random token sequence seen a moment before is no lower than on the first sight of
it), so it cannot bring the thing a question names into its answer: asked about giraffes, it
talks about whatever its training answers talked about most. Conversations whose answer is the
user's own sentence, repeated, make copying the whole of their loss; mixed into instruction
tuning they teach the attention that topical answers need.

The sentences are the prose of the built pretraining split (Brown, Austen, fortunes, the
Jargon File: no documentation code), 6-30 words, one or two in a row, chosen by a seeded draw;
the request is phrased in several ways so the task, not one wording, is learnt. Written in the
corpus's chat format, split by a hash of each record's id, with a manifest of the settings and
each file's sha256.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model_runtime.corpus.chat_sets import hash_split, write_chat_splits
from model_runtime.corpus.manifest import sha256_file, write_manifest

PROSE_SOURCES = ("brown", "austen", "fortunes", "jargon")
REQUESTS = (
    "Repeat after me: {text}",
    "Please say this back to me: {text}",
    "Can you repeat this exactly? {text}",
    "Say exactly this: {text}",
    'Repeat this sentence word for word: "{text}"',
    "Copy this text: {text}",
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
_WORD = re.compile(r"[A-Za-z']+")
# a full stop that ends one of these does not end the sentence ("Mr. Bennet", "J. Smith")
_ABBREVIATION = re.compile(
    r"(?:\b(?:Mr|Mrs|Ms|Dr|St|Rev|Col|Gen|Gov|Sen|Jr|Sr|Mt|No|vs|etc|Jan|Feb|Aug|Sept|Oct|Nov|Dec)"
    r"|\b[A-Z]|\b[ap]\.m|\be\.g|\bi\.e)\.$"
)


@dataclass(frozen=True)
class RepeatConfig:
    corpus_dir: Path  # a built corpus: its pretrain/train.jsonl gives the sentences
    out_dir: Path
    count: int = 6000
    min_words: int = 6
    max_words: int = 30
    valid_fraction: float = 0.05
    seed: int = 0


def split_sentences(text: str) -> list[str]:
    """``text`` cut after each ``.``, ``!`` or ``?`` followed by a capital or a quote, except
    after a title, an initial or a common abbreviation."""
    sentences: list[str] = []
    for piece in _SENTENCE_END.split(text):
        if sentences and _ABBREVIATION.search(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return sentences


def prose_sentences(pretrain_jsonl: Path, *, min_words: int, max_words: int) -> list[str]:
    """Sentences of the prose sources, in file order, each once: plain one-line text with
    letters for most of its characters and ``min_words`` to ``max_words`` words."""
    seen: set[str] = set()
    sentences: list[str] = []
    with pretrain_jsonl.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record["source"] not in PROSE_SOURCES:
                continue
            for paragraph in record["text"].split("\n\n"):
                flat = " ".join(paragraph.split())
                for sentence in split_sentences(flat):
                    words = _WORD.findall(sentence)
                    letters = sum(char.isalpha() for char in sentence)
                    if not min_words <= len(words) <= max_words or letters < 0.7 * len(sentence):
                        continue
                    if sentence.casefold() not in seen:
                        seen.add(sentence.casefold())
                        sentences.append(sentence)
    return sentences


def repeat_conversations(sentences: list[str], *, count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` conversations (fewer if there are fewer sentences): each repeats one sentence,
    or two in a row (one in four), under one of :data:`REQUESTS`."""
    rng = random.Random(seed)
    starts = rng.sample(range(len(sentences)), min(count, len(sentences)))
    records = []
    for start in starts:
        pair = rng.random() < 0.25 and start + 1 < len(sentences)
        text = " ".join(sentences[start : start + (2 if pair else 1)])
        request = rng.choice(REQUESTS).format(text=text)
        record_id = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        records.append(
            {
                "id": f"repeat/{record_id}",
                "source": "repeat",
                "messages": [
                    {"role": "user", "content": request},
                    {"role": "assistant", "content": text},
                ],
            }
        )
    return records


def build_repeat_set(config: RepeatConfig) -> dict[str, Any]:
    """Write ``train.jsonl``, ``valid.jsonl`` and ``manifest.json``; returns the manifest."""
    pretrain = config.corpus_dir / "pretrain" / "train.jsonl"
    if not pretrain.exists():
        raise FileNotFoundError(f"{pretrain}: build the corpus first (corpus build)")
    sentences = prose_sentences(pretrain, min_words=config.min_words, max_words=config.max_words)
    records = repeat_conversations(sentences, count=config.count, seed=config.seed)
    splits: dict[str, list[str]] = {"train": [], "valid": []}
    for record in records:
        line = json.dumps(record, ensure_ascii=False)
        splits[hash_split(record["id"], config.valid_fraction)].append(line)
    files = write_chat_splits(config.out_dir, splits)
    manifest = {
        "format_version": 1,
        "from": {"file": "pretrain/train.jsonl", "sha256": sha256_file(pretrain)},
        "sources": list(PROSE_SOURCES),
        "sentences_available": len(sentences),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "files": files,
    }
    write_manifest(config.out_dir, manifest)
    return manifest
