"""Per-row sampling in a batch: a row's token depends on its own logits, settings and generator
only, and the engine's nucleus filter keeps exactly what ``sampling.top_p_filter`` keeps."""

from __future__ import annotations

import pytest
import torch

from model_runtime.engine.sampler import RowSettings, choose_tokens, nucleus_filter
from model_runtime.sampling import SamplingParams, top_p_filter


@pytest.mark.parametrize("scale", [0.3, 3.0, 30.0], ids=["flat", "normal", "peaked"])
def test_nucleus_filter_keeps_what_top_p_filter_keeps(scale: float) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 500, generator=generator) * scale
    logits[::7, :50] = float("-inf")  # a vocabulary cut short on some rows
    p = torch.rand(64, generator=generator).clamp(min=0.01)
    p[::5] = 1.0
    p[1::9] = 1e-30
    assert torch.equal(nucleus_filter(logits, p), top_p_filter(logits, p))


def test_nucleus_filter_breaks_ties_like_a_stable_sort() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randint(0, 4, (32, 40), generator=generator).float()  # many equal logits
    for p in (0.05, 0.3, 0.5, 0.9):
        ps = torch.full((32,), p)
        assert torch.equal(nucleus_filter(logits, ps), top_p_filter(logits, ps))


def test_a_rows_token_does_not_depend_on_its_neighbours() -> None:
    vocab = 300
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(5, vocab, generator=generator) * 2
    params = [
        SamplingParams(temperature=0.7, top_p=0.9, seed=1),
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.3, top_k=20, seed=2),
        SamplingParams(temperature=1.0, presence_penalty=1.5, repetition_penalty=1.2, seed=3),
        SamplingParams(temperature=0.5, seed=4),
    ]
    seen = torch.rand(5, vocab, generator=generator) < 0.1
    counts = torch.randint(0, 3, (5, vocab), generator=generator).float()
    bias = [{7: 5.0}, {}, {}, {8: -100.0}, {}]

    def pick(rows: list[int]) -> list[int]:
        settings = RowSettings.of(
            [params[r] for r in rows],
            [0] * len(rows),
            torch.device("cpu"),
            logit_bias=[bias[r] for r in rows],
            vocab_size=vocab,
        )
        generators = [
            None if params[r].greedy else torch.Generator().manual_seed(params[r].seed or 0)
            for r in rows
        ]
        choice = choose_tokens(
            logits[rows], settings, generators, seen=seen[rows], counts=counts[rows]
        )
        return [int(t) for t in choice.tokens]

    together = pick([0, 1, 2, 3, 4])
    alone = [pick([row])[0] for row in range(5)]
    assert together == alone
