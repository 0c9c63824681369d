"""Writing a generated chat set (``corpus distill``, ``corpus repeat``) as train/valid files.

Each record goes to ``valid`` or ``train`` by a sha256 of its id alone, so a record keeps its
split whatever else the set holds; files are replaced whole (written beside, then renamed).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from model_runtime.corpus.manifest import sha256_file


def hash_split(record_id: str, valid_fraction: float) -> str:
    """``valid`` for the first ``valid_fraction`` of the hash range, else ``train``."""
    bucket = int(hashlib.sha256(record_id.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "valid" if bucket < valid_fraction else "train"


def write_chat_splits(out_dir: Path, splits: dict[str, list[str]]) -> dict[str, Any]:
    """Write ``SPLIT.jsonl`` for each split's JSON lines (without their newlines); returns each
    file's bytes, sha256 and record count, for a manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    for split, lines in splits.items():
        path = out_dir / f"{split}.jsonl"
        staging = path.with_suffix(".jsonl.tmp")
        staging.write_text("".join(line + "\n" for line in lines), "utf-8")
        staging.replace(path)
        files[path.name] = {
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
            "records": len(lines),
        }
    return files
