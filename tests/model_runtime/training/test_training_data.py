"""Packing, reading and batch order of the training data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model_runtime.tokenizer import ChatTokenizer
from model_runtime.training.data import (
    IGNORE_INDEX,
    BatchOrder,
    expand_files,
    pack_documents,
    pretraining_rows,
    read_documents,
    shard,
    split_held_out,
)

EOS, PAD = 1, 0


def test_packing_puts_eos_after_each_document_and_makes_every_token_a_target_once() -> None:
    docs = [[10, 11, 12], [20, 21], [30, 31, 32, 33, 34], [40]]
    rows = pack_documents(docs, seq_len=4, eos_id=EOS, pad_id=PAD)
    stream = [10, 11, 12, EOS, 20, 21, EOS, 30, 31, 32, 33, 34, EOS, 40, EOS]  # 15 ids
    # ceil(14 / 4) = 4 rows of 5 ids overlapping by one; the last is padded.
    assert rows.tokens.tolist() == [
        [10, 11, 12, EOS, 20],
        [20, 21, EOS, 30, 31],
        [31, 32, 33, 34, EOS],
        [EOS, 40, EOS, PAD, PAD],
    ]
    batch = rows.batch([0, 1, 2, 3])
    assert batch.inputs.tolist() == [row[:-1] for row in rows.tokens.tolist()]
    labels = batch.labels.tolist()
    assert labels[3] == [40, EOS, IGNORE_INDEX, IGNORE_INDEX]
    # Concatenating the labels gives the stream minus its first id: each id exactly once.
    flat = [x for row in labels for x in row if x != IGNORE_INDEX]
    assert flat == stream[1:]
    assert rows.num_targets == len(stream) - 1


def test_pretraining_rows_shuffle_documents_by_seed(tokenizer: ChatTokenizer) -> None:
    docs = [f"Document number {i} is here." for i in range(12)]
    a = pretraining_rows(tokenizer, docs, seq_len=8, seed=0)
    b = pretraining_rows(tokenizer, docs, seq_len=8, seed=0)
    c = pretraining_rows(tokenizer, docs, seq_len=8, seed=1)
    assert np.array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)
    # The stream (rows overlap by one id) splits at EOS into exactly the documents.
    orders = []
    for rows in (a, c):
        stream = rows.tokens[0].tolist() + [x for row in rows.tokens[1:] for x in row[1:].tolist()]
        stream = stream[: rows.num_targets + 1]  # drop the padding
        pieces: list[list[int]] = [[]]
        for token in stream:
            if token == tokenizer.eos_id:
                pieces.append([])
            else:
                pieces[-1].append(token)
        assert pieces[-1] == []  # EOS after the last document too
        texts = [tokenizer.decode(piece) for piece in pieces[:-1]]
        assert sorted(texts) == sorted(docs)
        orders.append(texts)
    assert orders[0] != orders[1]


def test_batch_order_is_a_fresh_permutation_each_epoch_and_a_pure_function() -> None:
    order = BatchOrder(num_rows=10, batch_size=4, seed=7)
    first_epoch = np.concatenate([order.rows(0), order.rows(1), order.rows(2)[:2]])
    assert sorted(first_epoch.tolist()) == list(range(10))
    # Micro-batch 2 straddles the epoch boundary: two rows of epoch 0, two of epoch 1.
    second = np.concatenate([order.rows(2)[2:], order.rows(3), order.rows(4)])
    assert sorted(second.tolist()) == list(range(10))
    assert first_epoch.tolist() != second.tolist()
    again = BatchOrder(num_rows=10, batch_size=4, seed=7)
    assert again.rows(3).tolist() == order.rows(3).tolist()  # no hidden state: resumable
    assert BatchOrder(num_rows=10, batch_size=4, seed=8).rows(0).tolist() != order.rows(0).tolist()
    assert order.epoch_of(5) == pytest.approx(2.0)


def test_shards_are_disjoint_and_cover_the_global_batch() -> None:
    rows = np.array([5, 3, 9, 1, 0, 7], dtype=np.int64)
    shards = [shard(rows, rank, 2).tolist() for rank in range(2)]
    assert shards == [[5, 3, 9], [1, 0, 7]]
    assert np.concatenate([shard(rows, r, 4) for r in range(4)]).tolist() == rows.tolist()


def test_held_out_split_is_fixed_by_seed() -> None:
    train, held = split_held_out(20, 0.1, seed=3)
    assert len(held) == 2 and len(train) == 18
    assert sorted([*train.tolist(), *held.tolist()]) == list(range(20))
    assert split_held_out(20, 0.1, seed=3)[1].tolist() == held.tolist()
    assert len(split_held_out(20, 0.0, seed=3)[1]) == 0
    assert len(split_held_out(5, 0.01, seed=3)[1]) == 1  # at least one when asked for some


def test_reads_jsonl_and_plain_text_documents_and_expands_globs(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"text": "first"}) + "\n\n" + json.dumps({"text": "second", "id": 2}) + "\n"
    )
    (tmp_path / "b.txt").write_text("a whole file\nis one document\n")
    files = expand_files([str(tmp_path / "*.jsonl"), str(tmp_path / "b.txt")])
    assert [f.name for f in files] == ["a.jsonl", "b.txt"]
    assert read_documents(files) == ["first", "second", "a whole file\nis one document\n"]
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_files([str(tmp_path / "*.parquet")])
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a string field 'text'"):
        read_documents([tmp_path / "bad.jsonl"])
