"""``manifest.json``: what a corpus build read, kept and wrote, with hashes to check it by.

Layout (``format_version`` 1)::

    {"format_version": 1, "settings": {...},
     "sources": [{"name", "kind", "license", "origin": [{"manager", "package", "version"}],
                  "readers": [...], "location", "raw_files", "raw_bytes",
                  "documents_read", "text_bytes_read", "dropped_short", "dedup": {...},
                  "documents_kept", "bytes_kept", "sha256",
                  "splits": {"train": {"documents", "bytes"}, ...}}, ...],
     "skipped_sources": [{"name", "reason"}],
     "dedup": {"pretrain": {...}, "chat": {...}},
     "files": {"pretrain/train.jsonl": {"bytes", "sha256", "records"}, ...}}

A source's ``sha256`` is the digest of its JSONL lines as written, taken over the train, valid
and test files in that order (:func:`source_digests` recomputes it from the files).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def source_digests(out_dir: Path, relative_files: Iterable[str]) -> dict[str, str]:
    """Per source, the sha256 of its JSONL lines over ``relative_files`` in the given order."""
    digests: dict[str, Any] = {}
    for relative in relative_files:
        with (out_dir / relative).open("rb") as handle:
            for line in handle:
                source = str(json.loads(line)["source"])
                digests.setdefault(source, hashlib.sha256()).update(line)
    return {source: digest.hexdigest() for source, digest in digests.items()}


def write_manifest(out_dir: Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``manifest.json`` (via a temporary file, so a reader never sees half of it)."""
    path = out_dir / MANIFEST_NAME
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", "utf-8")
    staging.replace(path)
    return path


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """The manifest of a built corpus; rejects an unknown ``format_version``."""
    manifest: dict[str, Any] = json.loads((out_dir / MANIFEST_NAME).read_text("utf-8"))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{out_dir / MANIFEST_NAME}: format_version {manifest.get('format_version')!r}, "
            f"expected {FORMAT_VERSION}"
        )
    return manifest


def verify_corpus(out_dir: Path) -> list[str]:
    """Problems found checking the written files against the manifest (empty when sound):
    missing files, sizes or sha256 that differ, per-source digests that differ."""
    manifest = read_manifest(out_dir)
    problems: list[str] = []
    for relative, expected in manifest["files"].items():
        path = out_dir / relative
        if not path.exists():
            problems.append(f"{relative}: missing")
        elif path.stat().st_size != expected["bytes"]:
            problems.append(
                f"{relative}: {path.stat().st_size} bytes, expected {expected['bytes']}"
            )
        elif sha256_file(path) != expected["sha256"]:
            problems.append(f"{relative}: sha256 differs")
    if problems:
        return problems
    for kind in ("pretrain", "chat"):
        files = [f"{kind}/{split}.jsonl" for split in ("train", "valid", "test")]
        present = [f for f in files if f in manifest["files"]]
        digests = source_digests(out_dir, present) if present else {}
        for source in manifest["sources"]:
            written = digests.get(source["name"], hashlib.sha256().hexdigest())
            if source["kind"] == kind and written != source["sha256"]:
                problems.append(f"source {source['name']}: sha256 differs")
    return problems
