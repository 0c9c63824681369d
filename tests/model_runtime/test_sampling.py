"""Logits processors on hand-made vectors with hand-worked expected values."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from model_runtime.sampling import (
    SamplingParams,
    apply_frequency_presence_penalties,
    apply_repetition_penalty,
    apply_temperature,
    greedy_tokens,
    process_logits,
    sample_from_logits,
    token_counts,
    top_k_filter,
    top_p_filter,
)

INF = float("inf")


def row(*values: float) -> torch.Tensor:
    return torch.tensor([list(values)], dtype=torch.float32)


# --- SamplingParams -------------------------------------------------------------------------


def test_defaults_are_valid_and_not_greedy() -> None:
    params = SamplingParams()
    assert params.temperature == 1.0 and not params.greedy
    assert SamplingParams(temperature=0).greedy


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", math.inf),
        ("temperature", math.nan),
        ("top_k", -1),
        ("top_k", 2.5),
        ("top_p", 0.0),
        ("top_p", 1.01),
        ("repetition_penalty", 0.0),
        ("frequency_penalty", 2.01),
        ("frequency_penalty", -2.5),
        ("presence_penalty", 3.0),
        ("max_new_tokens", 0),
        ("stop_token_ids", (-1,)),
        ("stop_strings", ("",)),
        ("seed", -1),
        ("seed", 2**63),
        ("n", 0),
        ("n", True),
    ],
)
def test_out_of_range_values_are_value_errors_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field.split("_")[0]):
        SamplingParams(**{field: value})


def test_edges_of_the_ranges_are_accepted() -> None:
    SamplingParams(temperature=0, top_p=1.0, frequency_penalty=-2, presence_penalty=2, seed=0)
    SamplingParams(top_p=1e-9, repetition_penalty=1e-3, seed=2**63 - 1)


def test_lists_become_tuples_and_dict_round_trip() -> None:
    params = SamplingParams(stop_token_ids=[3, 4], stop_strings=["\n\n"], seed=7)  # type: ignore[arg-type]
    assert params.stop_token_ids == (3, 4) and params.stop_strings == ("\n\n",)
    hash(params)
    data = params.to_dict()
    assert data["stop_token_ids"] == [3, 4]
    assert SamplingParams.from_dict(data) == params


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown sampling parameters: best_of"):
        SamplingParams.from_dict({"best_of": 2})


# --- penalties ------------------------------------------------------------------------------


def test_token_counts_skip_masked_positions() -> None:
    ids = torch.tensor([[1, 1, 3, 0]])
    mask = torch.tensor([[True, True, True, False]])
    assert token_counts(ids, 4, mask=mask).tolist() == [[0.0, 2.0, 0.0, 1.0]]
    assert token_counts(ids, 4).tolist() == [[1.0, 2.0, 0.0, 1.0]]


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    logits = row(2.0, -1.0, 0.5, -3.0)
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, -3.0]]
    assert logits.tolist() == [[2.0, -1.0, 0.5, -3.0]]  # input untouched


def test_repetition_penalty_per_row() -> None:
    logits = torch.tensor([[4.0, -1.0], [4.0, -1.0]])
    seen = torch.ones(2, 2, dtype=torch.bool)
    out = apply_repetition_penalty(logits, seen, torch.tensor([2.0, 0.5]))
    assert out.tolist() == [[2.0, -2.0], [8.0, -0.5]]


def test_frequency_and_presence_penalties() -> None:
    logits = row(1.0, 1.0, 1.0)
    counts = torch.tensor([[0.0, 1.0, 3.0]])
    out = apply_frequency_presence_penalties(logits, counts, 0.5, 0.25)
    # token 1: 1 - 0.5*1 - 0.25 = 0.25; token 2: 1 - 0.5*3 - 0.25 = -0.75
    assert out.tolist() == [[1.0, 0.25, -0.75]]


def test_negative_penalties_encourage_repeats() -> None:
    out = apply_frequency_presence_penalties(row(0.0, 0.0), torch.tensor([[2.0, 0.0]]), -1.0, -0.5)
    assert out.tolist() == [[2.5, 0.0]]


# --- temperature and filters -----------------------------------------------------------------


def test_temperature_divides_and_zero_means_unchanged() -> None:
    logits = torch.tensor([[2.0, -4.0], [2.0, -4.0]])
    assert apply_temperature(logits, 0.5).tolist() == [[4.0, -8.0], [4.0, -8.0]]
    per_row = apply_temperature(logits, torch.tensor([0.0, 2.0]))
    assert per_row.tolist() == [[2.0, -4.0], [1.0, -2.0]]


def test_top_k_keeps_the_k_highest() -> None:
    out = top_k_filter(row(1.0, 3.0, 2.0, 0.0), 2)
    assert out.tolist() == [[-INF, 3.0, 2.0, -INF]]


def test_top_k_keeps_ties_and_zero_or_large_k_is_off() -> None:
    assert top_k_filter(row(1.0, 2.0, 2.0, 0.0), 1).tolist() == [[-INF, 2.0, 2.0, -INF]]
    assert top_k_filter(row(1.0, 2.0), 0).tolist() == [[1.0, 2.0]]
    assert top_k_filter(row(1.0, 2.0), 5).tolist() == [[1.0, 2.0]]


def test_top_k_per_row() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    out = top_k_filter(logits, torch.tensor([1, 0]))
    assert out.tolist() == [[-INF, 3.0, -INF], [1.0, 3.0, 2.0]]


def nucleus_logits() -> torch.Tensor:
    # probabilities 0.15, 0.5, 0.05, 0.3 in shuffled positions
    return torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]]))


@pytest.mark.parametrize(
    ("p", "kept"),
    [
        (1e-6, [1]),  # always at least the most likely token
        (0.4, [1]),  # 0.5 >= 0.4 already
        (0.75, [1, 3]),  # mass above token 3 is 0.5 < 0.75; above token 0 is 0.8
        (0.9, [0, 1, 3]),  # mass above token 2 is 0.95 >= 0.9
        (1.0, [0, 1, 2, 3]),  # off
    ],
)
def test_top_p_keeps_the_smallest_nucleus(p: float, kept: list[int]) -> None:
    logits = nucleus_logits()
    out = top_p_filter(logits, p)
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == kept
    assert torch.equal(out[0, kept], logits[0, kept])


def test_top_p_per_row() -> None:
    logits = nucleus_logits().repeat(2, 1)
    out = top_p_filter(logits, torch.tensor([0.4, 0.9]))
    assert torch.isfinite(out).tolist() == [[False, True, False, False], [True, True, False, True]]


def test_process_logits_order_penalties_then_temperature_then_filters() -> None:
    params = SamplingParams(temperature=0.5, top_k=2, repetition_penalty=2.0, frequency_penalty=1.0)
    logits = row(4.0, 3.0, 1.0, -1.0)
    seen = torch.tensor([[True, False, False, True]])
    counts = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    out = process_logits(logits, params, seen=seen, completion_counts=counts)
    # repetition: [2, 3, 1, -2]; frequency: [1, 3, 1, -2]; temperature: [2, 6, 2, -4];
    # top-2 keeps 6 and both 2s (tie)
    assert out.tolist() == [[2.0, 6.0, 2.0, -INF]]


def test_process_logits_greedy_applies_penalties_only() -> None:
    params = SamplingParams(temperature=0, top_k=1, presence_penalty=2.0)
    out = process_logits(row(3.0, 2.0), params, completion_counts=torch.tensor([[1.0, 0.0]]))
    assert out.tolist() == [[1.0, 2.0]]
    assert greedy_tokens(out).tolist() == [1]


def test_process_logits_needs_history_for_penalties() -> None:
    with pytest.raises(ValueError, match="seen"):
        process_logits(row(1.0), SamplingParams(repetition_penalty=1.5))
    with pytest.raises(ValueError, match="counts"):
        process_logits(row(1.0), SamplingParams(frequency_penalty=0.5))


# --- drawing tokens -------------------------------------------------------------------------


def test_sample_inverts_the_cdf_with_one_uniform_per_row() -> None:
    logits = torch.log(torch.tensor([[0.25, 0.75]]))
    for seed in range(20):
        u = torch.rand((), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        expected = 0 if u < 0.25 else 1
        token = sample_from_logits(logits, [torch.Generator().manual_seed(seed)])
        assert token.tolist() == [expected]


def test_sample_never_draws_filtered_tokens_and_follows_the_distribution() -> None:
    logits = top_k_filter(torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]])), 2)
    gen = torch.Generator().manual_seed(0)
    draws = [int(sample_from_logits(logits, [gen])[0]) for _ in range(2000)]
    assert set(draws) == {2, 3}
    share = draws.count(3) / len(draws)
    assert abs(share - 4 / 7) < 0.05  # renormalised 0.4 / 0.7


def test_a_rows_draw_does_not_depend_on_its_batch_neighbours() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    alone = [
        int(sample_from_logits(logits[i : i + 1], [torch.Generator().manual_seed(10 + i)])[0])
        for i in range(3)
    ]
    gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    assert sample_from_logits(logits, gens).tolist() == alone


def test_sample_needs_one_generator_per_row() -> None:
    with pytest.raises(ValueError, match="one generator per row"):
        sample_from_logits(torch.zeros(2, 3), [torch.Generator()])
