"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

For optimizer step ``s`` (0-based), with ``W`` warmup steps and ``S`` steps in all:

    s <  W:  lr = peak * (s + 1) / W                   (the first step already moves)
    s >= W:  p = (s - W) / (S - 1 - W), clipped to [0, 1]
             lr = min + (peak - min) * (1 + cos(pi * p)) / 2

so the first step after warmup runs at ``peak`` and the last one (``s = S - 1``) at ``min``
(when those are the same step, ``S = W + 1``, it runs at ``peak``; steps past ``S - 1`` stay at
``min``).
The schedule is a pure function of the step: resuming needs only the step count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupCosine:
    """``schedule(step) -> lr``; see the module docstring."""

    peak_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int

    def __post_init__(self) -> None:
        if self.total_steps < 1 or self.warmup_steps < 0:
            raise ValueError(
                f"need total_steps >= 1 and warmup_steps >= 0, got "
                f"{self.total_steps} and {self.warmup_steps}"
            )
        if not 0.0 <= self.min_lr <= self.peak_lr:
            raise ValueError(f"need 0 <= min_lr <= peak_lr, got {self.min_lr}, {self.peak_lr}")

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        decay_steps = self.total_steps - 1 - self.warmup_steps
        since_warmup = step - self.warmup_steps
        if decay_steps <= 0:
            progress = 0.0 if since_warmup == 0 else 1.0
        else:
            progress = min(1.0, since_warmup / decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + (self.peak_lr - self.min_lr) * cosine
