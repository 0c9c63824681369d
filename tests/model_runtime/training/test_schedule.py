"""Warmup + cosine learning rate, against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from model_runtime.training.schedule import WarmupCosine


def test_warmup_is_linear_and_reaches_the_peak_on_its_last_step() -> None:
    schedule = WarmupCosine(peak_lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=10)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_decays_from_peak_to_floor_over_the_remaining_steps() -> None:
    # warmup 4, total 10: decay over steps 4..9, progress (s - 4) / 5.
    schedule = WarmupCosine(peak_lr=1.0, min_lr=0.1, warmup_steps=4, total_steps=10)
    assert schedule(4) == pytest.approx(1.0)  # progress 0
    assert schedule(9) == pytest.approx(0.1)  # progress 1: the last step runs at the floor
    # progress 0.4: 0.1 + 0.9 * (1 + cos(0.4 pi)) / 2 = 0.1 + 0.45 * 1.309017 = 0.689058
    assert schedule(6) == pytest.approx(0.1 + 0.45 * (1 + math.cos(0.4 * math.pi)))
    assert schedule(6) == pytest.approx(0.6890576, abs=1e-6)
    # progress 0.5 falls between steps here; with total 9 step 6 is the midpoint (2 / 4).
    half = WarmupCosine(peak_lr=2.0, min_lr=0.0, warmup_steps=4, total_steps=9)
    assert half(6) == pytest.approx(1.0)
    values = [schedule(s) for s in range(4, 10)]
    assert values == sorted(values, reverse=True)


def test_steps_past_the_end_stay_at_the_floor_and_no_warmup_starts_at_peak() -> None:
    schedule = WarmupCosine(peak_lr=3e-4, min_lr=3e-5, warmup_steps=0, total_steps=5)
    assert schedule(0) == pytest.approx(3e-4)
    assert schedule(4) == pytest.approx(3e-5)
    assert schedule(50) == pytest.approx(3e-5)


def test_a_one_step_run_trains_at_the_peak() -> None:
    assert WarmupCosine(peak_lr=0.5, min_lr=0.0, warmup_steps=0, total_steps=1)(0) == 0.5


@pytest.mark.parametrize(
    ("peak", "floor", "warmup", "total"), [(1.0, 2.0, 0, 5), (1.0, 0.0, -1, 5), (1.0, 0.0, 0, 0)]
)
def test_rejects_inconsistent_settings(peak: float, floor: float, warmup: int, total: int) -> None:
    with pytest.raises(ValueError):
        WarmupCosine(peak_lr=peak, min_lr=floor, warmup_steps=warmup, total_steps=total)
