"""Deterministic train/valid/test assignment from a document's id.

The split depends only on the id and a salt, never on the order, the other documents or the
machine: rebuilding the corpus, or adding a source, leaves every existing document where it
was. Deduplication runs before splitting, so no exact or near copy crosses splits.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Split = Literal["train", "valid", "test"]
SPLITS: tuple[Split, ...] = ("train", "valid", "test")
DEFAULT_SALT = "palmloop-corpus-v1"


def split_position(doc_id: str, *, salt: str = DEFAULT_SALT) -> float:
    """A uniform number in [0, 1) derived from the id (first 8 bytes of a BLAKE2b digest)."""
    digest = hashlib.blake2b(f"{salt}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_split(
    doc_id: str,
    *,
    valid_fraction: float = 0.01,
    test_fraction: float = 0.01,
    salt: str = DEFAULT_SALT,
) -> Split:
    """``valid`` for the first ``valid_fraction`` of the hash range, ``test`` for the next
    ``test_fraction``, ``train`` for the rest."""
    if valid_fraction < 0 or test_fraction < 0 or valid_fraction + test_fraction > 1:
        raise ValueError(f"bad split fractions: valid={valid_fraction}, test={test_fraction}")
    position = split_position(doc_id, salt=salt)
    if position < valid_fraction:
        return "valid"
    if position < valid_fraction + test_fraction:
        return "test"
    return "train"
