"""``corpus build``: read the sources, clean, deduplicate, split, write, record a manifest.

For each pretraining document, in source order: normalise (NFC, whitespace), drop it when too
short or not mostly letters, drop it when an exact or near copy was kept before, take out
paragraphs already kept elsewhere (and drop it if too little remains), then write it to the
split its id hashes to. Conversations go through the same steps on their messages (whole
conversations only: no paragraph step). Files are written to a staging directory and moved
into ``out_dir`` when complete; ``manifest.json`` is written last.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import IO, Any, TypeVar

from tqdm import tqdm

from model_runtime.corpus.dedup import Deduplicator, DedupStats
from model_runtime.corpus.documents import (
    ChatTurn,
    Conversation,
    Document,
    SourceModuleMissingError,
)
from model_runtime.corpus.formats import (
    CHAT_DIR,
    PRETRAIN_DIR,
    chat_line,
    chat_text,
    pretrain_line,
)
from model_runtime.corpus.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    sha256_file,
    source_digests,
    write_manifest,
)
from model_runtime.corpus.sources import CHAT_SOURCES, PRETRAIN_SOURCES, SOURCE_NAMES, Source
from model_runtime.corpus.splits import DEFAULT_SALT, SPLITS, Split, assign_split
from model_runtime.corpus.text import collapse_spaces, looks_like_text, normalize_text

ItemT = TypeVar("ItemT", Document, Conversation)
STAGING_NAME = ".building"


@dataclass(frozen=True)
class BuildConfig:
    """What to build and how. ``locations`` overrides where a source's files are read from."""

    out_dir: Path
    sources: tuple[str, ...] = SOURCE_NAMES
    locations: Mapping[str, Path] = field(default_factory=dict)
    valid_fraction: float = 0.01
    test_fraction: float = 0.01
    split_salt: str = DEFAULT_SALT
    min_letter_ratio: float = 0.5
    min_paragraph_chars: int = 60
    skip_missing: bool = False
    progress: bool = True


@dataclass(frozen=True)
class BuildResult:
    out_dir: Path
    manifest: dict[str, Any]
    seconds: float


@dataclass
class _SourceTally:
    documents_read: int = 0
    text_bytes_read: int = 0
    dropped_quality: int = 0
    dedup: DedupStats = field(default_factory=DedupStats)
    documents_kept: int = 0
    bytes_kept: int = 0
    splits: dict[str, dict[str, int]] = field(
        default_factory=lambda: {split: {"documents": 0, "bytes": 0} for split in SPLITS}
    )

    def keep(self, split: Split, size: int) -> None:
        self.documents_kept += 1
        self.bytes_kept += size
        self.splits[split]["documents"] += 1
        self.splits[split]["bytes"] += size


class _SplitWriter:
    """The JSONL and plain-text files of one kind (pretrain or chat), one pair per split."""

    def __init__(self, directory: Path, kind: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.kind = kind
        self.records = dict.fromkeys(SPLITS, 0)
        self.jsonl: dict[Split, IO[str]] = {}
        self.text: dict[Split, IO[str]] = {}
        for split in SPLITS:
            self.jsonl[split] = (directory / f"{split}.jsonl").open("w", encoding="utf-8")
            self.text[split] = (directory / f"{split}.txt").open("w", encoding="utf-8")

    def write(self, split: Split, line: str, text: str) -> None:
        if self.records[split]:
            self.text[split].write("\n")  # a blank line between documents
        self.jsonl[split].write(line)
        self.text[split].write(text + "\n")
        self.records[split] += 1

    def close(self) -> None:
        for handle in (*self.jsonl.values(), *self.text.values()):
            handle.close()

    def files(self) -> Iterator[tuple[str, int]]:
        """(path relative to the output directory, records) for every file written."""
        for split in SPLITS:
            for suffix in ("jsonl", "txt"):
                yield f"{self.kind}/{split}.{suffix}", self.records[split]


def _normalize_conversation(conversation: Conversation) -> Conversation | None:
    """Messages normalised; None when what is left is not user/assistant alternation
    ending on an assistant turn."""
    turns = []
    for turn in conversation.messages:
        lines = normalize_text(turn.content).split("\n")
        content = "\n".join(collapse_spaces(line) for line in lines).strip()
        if content:
            turns.append(ChatTurn(turn.role, content))
    body = turns[1:] if turns and turns[0].role == "system" else turns
    expected = ["user" if k % 2 == 0 else "assistant" for k in range(len(body))]
    if len(body) < 2 or [t.role for t in body] != expected or body[-1].role != "assistant":
        return None
    return Conversation(conversation.id, tuple(turns))


def _conversation_key_text(conversation: Conversation) -> str:
    return "\n\x1e\n".join(f"{t.role}:\n{t.content}" for t in conversation.messages)


class _Builder:
    def __init__(self, config: BuildConfig) -> None:
        self.config = config
        self.ids: set[str] = set()
        self.tallies: dict[str, _SourceTally] = {}
        self.dedup = {
            kind: Deduplicator(min_paragraph_chars=config.min_paragraph_chars)
            for kind in ("pretrain", "chat")
        }

    def _split(self, item_id: str) -> Split:
        if item_id in self.ids:
            raise ValueError(f"duplicate document id {item_id!r}: ids decide the split")
        self.ids.add(item_id)
        return assign_split(
            item_id,
            valid_fraction=self.config.valid_fraction,
            test_fraction=self.config.test_fraction,
            salt=self.config.split_salt,
        )

    def _progress(self, items: Iterable[ItemT], name: str) -> Iterable[ItemT]:
        return tqdm(
            items,
            desc=f"corpus {name}",
            unit="doc",
            disable=not self.config.progress,
            dynamic_ncols=True,
        )

    def pretrain(self, source: Source[Document], location: Path, writer: _SplitWriter) -> None:
        tally = self.tallies[source.name] = _SourceTally()
        dedup = self.dedup["pretrain"]
        ratio = self.config.min_letter_ratio
        for document in self._progress(source.load(location), source.name):
            tally.documents_read += 1
            tally.text_bytes_read += len(document.text.encode("utf-8"))
            text = normalize_text(document.text)
            if not looks_like_text(text, min_chars=source.min_chars, min_letter_ratio=ratio):
                tally.dropped_quality += 1
                continue
            verdict = dedup.check(text)
            if verdict != "unique":
                if verdict == "exact":
                    tally.dedup.exact_duplicates += 1
                else:
                    tally.dedup.near_duplicates += 1
                continue
            filtered = dedup.filter_paragraphs(text)
            if filtered.removed and not looks_like_text(
                filtered.text, min_chars=source.min_chars, min_letter_ratio=ratio
            ):
                tally.dedup.emptied_by_paragraphs += 1
                continue
            dedup.remember(filtered.new_keys)
            tally.dedup.repeated_paragraphs += filtered.removed
            kept = Document(document.id, filtered.text)
            split = self._split(kept.id)
            writer.write(split, pretrain_line(kept, source.name), kept.text)
            tally.keep(split, len(kept.text.encode("utf-8")))

    def chat(self, source: Source[Conversation], location: Path, writer: _SplitWriter) -> None:
        tally = self.tallies[source.name] = _SourceTally()
        dedup = self.dedup["chat"]
        for conversation in self._progress(source.load(location), source.name):
            tally.documents_read += 1
            raw_size = sum(len(t.content.encode("utf-8")) for t in conversation.messages)
            tally.text_bytes_read += raw_size
            cleaned = _normalize_conversation(conversation)
            if cleaned is None or not looks_like_text(
                chat_text(cleaned),
                min_chars=source.min_chars,
                min_letter_ratio=self.config.min_letter_ratio,
            ):
                tally.dropped_quality += 1
                continue
            verdict = dedup.check(_conversation_key_text(cleaned))
            if verdict != "unique":
                if verdict == "exact":
                    tally.dedup.exact_duplicates += 1
                else:
                    tally.dedup.near_duplicates += 1
                continue
            split = self._split(cleaned.id)
            writer.write(split, chat_line(cleaned, source.name), chat_text(cleaned))
            size = sum(len(t.content.encode("utf-8")) for t in cleaned.messages)
            tally.keep(split, size)


def _resolve(
    config: BuildConfig,
) -> tuple[
    list[tuple[Source[Document], Path]],
    list[tuple[Source[Conversation], Path]],
    list[dict[str, str]],
]:
    """Selected sources with their locations, checked to be installed; skipped ones."""
    unknown = [name for name in config.sources if name not in SOURCE_NAMES]
    if unknown:
        raise ValueError(f"unknown corpus sources {unknown}; known: {', '.join(SOURCE_NAMES)}")
    pretrain: list[tuple[Source[Document], Path]] = []
    chat: list[tuple[Source[Conversation], Path]] = []
    skipped: list[dict[str, str]] = []
    for name in SOURCE_NAMES:  # registry order, whatever order they were asked for in
        if name not in config.sources:
            continue
        source: Source[Document] | Source[Conversation] = (
            PRETRAIN_SOURCES[name] if name in PRETRAIN_SOURCES else CHAT_SOURCES[name]
        )
        try:
            location = config.locations.get(name) or source.default_location()
            source.raw_files(location)  # raises SourceMissingError when not installed
            for module in source.modules:
                if find_spec(module) is None:
                    raise SourceModuleMissingError(name, module, package=source.readers[0].name)
        except (FileNotFoundError, ModuleNotFoundError) as error:
            if not config.skip_missing:
                raise
            skipped.append({"name": name, "reason": str(error)})
            continue
        if name in PRETRAIN_SOURCES:
            pretrain.append((PRETRAIN_SOURCES[name], location))
        else:
            chat.append((CHAT_SOURCES[name], location))
    return pretrain, chat, skipped


def _source_entry(
    source: Source[Document] | Source[Conversation],
    location: Path,
    tally: _SourceTally,
    digest: str,
) -> dict[str, Any]:
    raw_files = source.raw_files(location)
    npm_location = location if location.is_dir() else location.parent
    return {
        "name": source.name,
        "kind": source.kind,
        "license": source.license,
        "origin": [
            {"manager": p.manager, "package": p.name, "version": p.version(npm_location)}
            for p in source.origin
        ],
        "readers": [
            {"manager": p.manager, "package": p.name, "version": p.version()}
            for p in source.readers
        ],
        "location": str(location),
        "raw_files": len(raw_files),
        "raw_bytes": sum(path.stat().st_size for path in raw_files),
        "min_chars": source.min_chars,
        "documents_read": tally.documents_read,
        "text_bytes_read": tally.text_bytes_read,
        "dropped_quality": tally.dropped_quality,
        "dedup": tally.dedup.to_dict(),
        "documents_kept": tally.documents_kept,
        "bytes_kept": tally.bytes_kept,
        "sha256": digest,
        "splits": tally.splits,
    }


def build_corpus(config: BuildConfig) -> BuildResult:
    """Build the corpus into ``config.out_dir``; returns the manifest that was written."""
    started = time.monotonic()
    pretrain, chat, skipped = _resolve(config)
    if not pretrain and not chat:
        raise ValueError("no corpus source left to build from")
    out_dir = config.out_dir
    staging = out_dir / STAGING_NAME
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    builder = _Builder(config)
    writers: list[_SplitWriter] = []
    try:
        if pretrain:
            writer = _SplitWriter(staging / PRETRAIN_DIR, "pretrain")
            writers.append(writer)
            for pretrain_source, location in pretrain:
                builder.pretrain(pretrain_source, location, writer)
        if chat:
            writer = _SplitWriter(staging / CHAT_DIR, "chat")
            writers.append(writer)
            for chat_source, location in chat:
                builder.chat(chat_source, location, writer)
    finally:
        for writer in writers:
            writer.close()

    files: dict[str, dict[str, Any]] = {}
    for writer in writers:
        for relative, records in writer.files():
            path = staging / relative
            files[relative] = {
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
                "records": records,
            }
    digests: dict[str, str] = {}
    for kind in ("pretrain", "chat"):
        jsonl = [f"{kind}/{split}.jsonl" for split in SPLITS if f"{kind}/{split}.jsonl" in files]
        digests.update(source_digests(staging, jsonl))
    empty = hashlib.sha256().hexdigest()
    selected: list[tuple[Source[Document] | Source[Conversation], Path]] = [*pretrain, *chat]
    sources = [
        _source_entry(
            source, location, builder.tallies[source.name], digests.get(source.name, empty)
        )
        for source, location in selected
    ]
    totals = {kind: DedupStats() for kind in ("pretrain", "chat")}
    for source, _ in selected:
        totals[source.kind].add(builder.tallies[source.name].dedup)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "settings": {
            "sources": [source.name for source, _ in selected],
            "valid_fraction": config.valid_fraction,
            "test_fraction": config.test_fraction,
            "split_salt": config.split_salt,
            "min_letter_ratio": config.min_letter_ratio,
            "min_paragraph_chars": config.min_paragraph_chars,
        },
        "sources": sources,
        "skipped_sources": skipped,
        "dedup": {kind: stats.to_dict() for kind, stats in totals.items()},
        "files": files,
    }
    (out_dir / MANIFEST_NAME).unlink(missing_ok=True)  # no manifest over half-moved files
    _publish(staging, out_dir, files)
    write_manifest(out_dir, manifest)
    return BuildResult(out_dir, manifest, time.monotonic() - started)


def _publish(staging: Path, out_dir: Path, files: Mapping[str, Any]) -> None:
    """Move the staged files into place, removing split files of a kind not rebuilt now."""
    for kind in (PRETRAIN_DIR, CHAT_DIR):
        stale = out_dir / kind
        if stale.exists() and not (staging / kind).exists():
            shutil.rmtree(stale)
    for relative in files:
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        (staging / relative).replace(target)
    shutil.rmtree(staging)
