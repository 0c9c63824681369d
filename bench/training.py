"""Training speed: palmloop's trainer step against HF GPT-NeoX and palm-rlhf-pytorch.

Three contenders at ~10M and ~40M parameters (vocab 8192, head dim 64), randomly initialised
with the same width and depth, trained on random tokens at batch 8 x sequence 256, in one run:

- **ours**: the trainer's own step (``model_runtime.training.step``): ``CausalLMLoss`` (bf16
  autocast over the trunk, the output projection and cross-entropy a block of rows at a time),
  AdamW with the trainer's parameter groups, gradient clipping at 1.0; ``torch.compile`` when
  ``--compile on`` (the trainer's ``"compile": true``).
- **hf**: ``transformers`` ``GPTNeoXForCausalLM`` (parallel residual, full rotary, SDPA, tied
  embeddings, ``intermediate_size = 5 * dim`` so its 4 D^2 attention + 10 D^2 MLP match PaLM's
  14 D^2 per block, as in ``bench/generation.py``); loss from its logits.
- **palm_rlhf**: PyPI ``palm-rlhf-pytorch``'s ``PaLM`` (the seed's model) as it comes (einsum
  attention), and **palm_rlhf_sdpa** with ``flash_attn=True`` (SDPA); loss from its logits. The
  faster of the two is the peer figure.

Every contender runs the same loop: bf16 ``torch.autocast``, mean next-token cross-entropy in
float32, ``backward``, ``clip_grad_norm_(1.0)``, ``AdamW.step`` (same groups and settings: the
trainer's ``build_adamw``, fused kernel), ``zero_grad``. Each contender is warmed up, then
timed over ``--steps`` steps per round for ``--rounds`` rounds, the contenders interleaved so
that load from other processes hits them alike; a figure is the best round (tokens/s = batch *
sequence / seconds per step).

The process keeps freed memory for reuse, as the trainer does (``model_runtime.allocator``), so
every contender runs with that allocator setting.

MFU = 6 * N * tokens/s / peak, with N the parameters that take part in matmuls (all of them for
the tied-embedding models here; the attention-score FLOPs are not counted, as in the 6N rule)
and peak the best rate at which this machine multiplies bf16 matrices (square 1024-3072
products, at the same thread count, sampled in every timing round so that peak and contenders
see the same machine load): the higher of oneDNN's bf16 rate and the float32 GEMM's, which can
multiply widened bf16 operands to the same numbers (an Intel Xeon with AVX512-BF16 but no AMX
ran oneDNN's bf16 at half the float32 GEMM's rate). palmloop's products take the float32 way
where its own measurement finds it 1.15x faster or more (``model_runtime.bf16_products``; the
first line printed says which); the peers run torch's bf16 autocast as they come.

Run from the repository root::

    .venv/bin/python bench/training.py                  # 10M and 40M, eager and compiled
    .venv/bin/python bench/training.py --quick          # 10M only, fewer steps
    .venv/bin/python bench/training.py --compile off    # skip torch.compile (minutes saved)
    .venv/bin/python bench/training.py --threads 1 --clock cpu  # on a busy machine

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from _peers import hf_gpt_neox
from torch import nn

from model_runtime.allocator import keep_freed_memory
from model_runtime.bf16_products import chosen_way, float32_faster
from model_runtime.config import PaLMConfig
from model_runtime.palm import PaLM
from model_runtime.training.step import CausalLMLoss, build_adamw

VOCAB = 8192
DIM_HEAD = 64
BATCH = 8
SEQ = 256
LR = 3e-4
TARGET_RATIO = 1.3
# Wall-clock by default; ``--clock cpu`` (with ``--threads 1``) times CPU seconds of this
# process instead, which other processes' load hardly moves: for comparing on a busy machine.
CLOCK: Callable[[], float] = time.perf_counter
TARGET_MFU = 0.75


@dataclass(frozen=True)
class Size:
    name: str
    dim: int
    depth: int

    @property
    def heads(self) -> int:
        return self.dim // DIM_HEAD


SIZES = (Size("10M", dim=256, depth=8), Size("40M", dim=512, depth=10))


@dataclass
class Contender:
    """A model and the loss of one batch; ``step()`` runs one full optimizer step."""

    name: str
    label: str
    params: int  # distinct parameters
    matmul_params: int  # parameters that multiply activations (N of the 6N rule)
    step: Callable[[], float]


def _training_step(
    module: nn.Module,
    loss_of: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    params_of: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
) -> Callable[[], float]:
    optimizer = build_adamw(params_of, lr=LR, weight_decay=0.1)
    params = [p for p in params_of.parameters() if p.requires_grad]

    def step() -> float:
        loss = loss_of(module, inputs, labels)
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def _logits_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))


def build_ours(
    size: Size, inputs: torch.Tensor, labels: torch.Tensor, *, compile_model: bool
) -> Contender:
    config = PaLMConfig(
        vocab_size=VOCAB,
        dim=size.dim,
        depth=size.depth,
        heads=size.heads,
        dim_head=DIM_HEAD,
        max_seq_len=SEQ,
    )
    model = PaLM(config).train()
    module: nn.Module = CausalLMLoss(model, "bf16")
    if compile_model:
        module = torch.compile(module)  # type: ignore[assignment]
    count = labels.numel()

    def loss_of(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        summed: torch.Tensor = m(x, y)
        return summed / count  # the trainer divides by the step's labelled positions

    params = model.num_parameters()
    name = "ours_compiled" if compile_model else "ours"
    label = "palmloop trainer" + (" (torch.compile)" if compile_model else "")
    return Contender(
        name, label, params, params, _training_step(module, loss_of, model, inputs, labels)
    )


def build_hf(size: Size, inputs: torch.Tensor, labels: torch.Tensor) -> Contender:
    model = hf_gpt_neox(
        vocab=VOCAB, dim=size.dim, depth=size.depth, heads=size.heads, context=SEQ, use_cache=False
    ).train()

    def loss_of(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = m(input_ids=x, use_cache=False).logits
        return _logits_loss(logits, y)

    params = sum(p.numel() for p in model.parameters())
    return Contender(
        "hf", "HF GPT-NeoX", params, params, _training_step(model, loss_of, model, inputs, labels)
    )


def build_palm_rlhf(
    size: Size, inputs: torch.Tensor, labels: torch.Tensor, *, sdpa: bool
) -> Contender:
    import warnings

    from palm_rlhf_pytorch import PaLM as SeedPaLM

    warnings.filterwarnings("ignore", category=FutureWarning)  # its sdp_kernel context
    model = SeedPaLM(
        num_tokens=VOCAB,
        dim=size.dim,
        depth=size.depth,
        heads=size.heads,
        dim_head=DIM_HEAD,
        flash_attn=sdpa,
    ).train()

    def loss_of(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = m(x)
        return _logits_loss(logits, y)

    params = sum(p.numel() for p in model.parameters())
    return Contender(
        "palm_rlhf_sdpa" if sdpa else "palm_rlhf",
        "palm-rlhf-pytorch" + (" (SDPA)" if sdpa else ""),
        params,
        params,
        _training_step(model, loss_of, model, inputs, labels),
    )


class PeakMeter:
    """Best bf16 and float32 matmul GFLOP/s seen: sampled once per timing round, between the
    contenders, so that the peak and the contenders are measured under the same (varying)
    machine load."""

    def __init__(self, sizes: tuple[int, ...] = (1024, 2048, 3072)) -> None:
        self.bf16 = 0.0
        self.fp32 = 0.0
        self._operands = [
            (n, torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype))
            for n in sizes
            for dtype in (torch.bfloat16, torch.float32)
        ]
        for _, a, b in self._operands:
            a @ b  # first call: oneDNN primitive creation, page faults

    @property
    def peak(self) -> float:
        """The fastest bf16 product here: oneDNN's bf16 kernels, or the float32 GEMM on widened
        bf16 operands (exact products, float32 sums: the same numbers up to summation order)."""
        return max(self.bf16, self.fp32)

    def sample(self, repeats: int = 3) -> None:
        for n, a, b in self._operands:
            for _ in range(repeats):
                start = CLOCK()
                a @ b
                rate = 2 * n**3 / (CLOCK() - start) / 1e9
                if a.dtype == torch.bfloat16:
                    self.bf16 = max(self.bf16, rate)
                else:
                    self.fp32 = max(self.fp32, rate)


def measure(
    contenders: list[Contender], peak: PeakMeter, *, warmup: int, steps: int, rounds: int
) -> dict[str, dict[str, Any]]:
    """Best-round seconds per step of each contender (interleaved rounds)."""
    results: dict[str, dict[str, Any]] = {}
    for contender in contenders:
        start = CLOCK()
        losses = [contender.step() for _ in range(warmup)]
        results[contender.name] = {
            "warmup_s": CLOCK() - start,
            "first_loss": losses[0],
            "best_step_s": float("inf"),
            "rounds_s": [],
        }
    for _ in range(rounds):
        peak.sample()
        for contender in contenders:
            start = CLOCK()
            for _ in range(steps):
                contender.step()
            seconds = (CLOCK() - start) / steps
            entry = results[contender.name]
            entry["rounds_s"].append(seconds)
            entry["best_step_s"] = min(entry["best_step_s"], seconds)
    peak.sample()
    return results


def run_size(size: Size, args: argparse.Namespace, peak: PeakMeter) -> dict[str, dict[str, Any]]:
    """Time every contender at one size; MFU is filled in later (against the final peak)."""
    torch.manual_seed(0)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1))
    inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    builders: list[Callable[[], Contender]] = [
        lambda: build_ours(size, inputs, labels, compile_model=False),
        lambda: build_hf(size, inputs, labels),
        lambda: build_palm_rlhf(size, inputs, labels, sdpa=False),
        lambda: build_palm_rlhf(size, inputs, labels, sdpa=True),
    ]
    if args.compile == "on":
        builders.insert(1, lambda: build_ours(size, inputs, labels, compile_model=True))
    contenders = []
    for build in builders:
        torch.manual_seed(0)
        contenders.append(build())
    results = measure(contenders, peak, warmup=args.warmup, steps=args.steps, rounds=args.rounds)
    for contender in contenders:
        entry = results[contender.name]
        tokens_per_s = BATCH * SEQ / entry["best_step_s"]
        entry.update(
            label=contender.label,
            params=contender.params,
            matmul_params=contender.matmul_params,
            tokens_per_s=tokens_per_s,
            model_gflops=6 * contender.matmul_params * tokens_per_s / 1e9,
        )
    return results


def summarise(name: str, results: dict[str, dict[str, Any]], peak: float) -> dict[str, Any]:
    """Print one size's table; return its figures (MFU against ``peak`` GFLOP/s)."""
    size = next(s for s in SIZES if s.name == name)
    print(f"\n{name}: dim {size.dim}, depth {size.depth}, heads {size.heads}")
    for entry in results.values():
        entry["mfu"] = entry["model_gflops"] / peak
        print(
            f"  {entry['label']:<34} {entry['params'] / 1e6:6.2f}M params  "
            f"{entry['tokens_per_s']:8.0f} tok/s  MFU {entry['mfu']:.2f}  "
            f"(warmup {entry['warmup_s']:.1f} s; rounds "
            + ", ".join(f"{s * 1000:.0f}" for s in entry["rounds_s"])
            + " ms/step)"
        )
    ours = {n: e for n, e in results.items() if n.startswith("ours")}
    best_ours = max(e["tokens_per_s"] for e in ours.values())
    seed_best = max(results[n]["tokens_per_s"] for n in ("palm_rlhf", "palm_rlhf_sdpa"))
    ratio_hf = best_ours / results["hf"]["tokens_per_s"]
    ratio_seed = best_ours / seed_best
    ours_mfu = max(e["mfu"] for e in ours.values())
    print(
        f"  ours (best) vs hf {ratio_hf:.2f}x, vs palm-rlhf (best) {ratio_seed:.2f}x "
        f"(target {TARGET_RATIO}x); MFU {ours_mfu:.2f} (target {TARGET_MFU})"
    )
    return {
        "contenders": {n: {k: v for k, v in e.items() if k != "label"} for n, e in results.items()},
        "ours_best_tokens_per_s": best_ours,
        "ratio_vs_hf": ratio_hf,
        "ratio_vs_palm_rlhf": ratio_seed,
        "ours_best_mfu": ours_mfu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10M only, fewer steps")
    parser.add_argument("--sizes", default=None, help="comma list of 10M,40M")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    parser.add_argument("--compile", choices=("on", "off"), default="on")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: CPU seconds of this process (needs --threads 1; robust to other load)",
    )
    args = parser.parse_args()
    if args.clock == "cpu":
        if args.threads != 1:
            parser.error("--clock cpu needs --threads 1 (CPU time adds up over threads)")
        global CLOCK
        CLOCK = time.process_time
    torch.set_num_threads(args.threads)
    # As the trainer does (Trainer.setup). It is the process's allocator, so every contender
    # here runs with it, the peers too.
    keep_freed_memory()
    names = args.sizes.split(",") if args.sizes else ["10M"] if args.quick else ["10M", "40M"]
    unknown = set(names) - {s.name for s in SIZES}
    if unknown:
        parser.error(f"unknown sizes {sorted(unknown)}")
    args.steps = args.steps or (2 if args.quick else 3)
    args.rounds = args.rounds or (3 if args.quick else 5)

    peak = PeakMeter()
    peak.sample()
    products = "the float32 GEMM" if float32_faster() else "oneDNN's bf16 kernels"
    print(
        f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}, "
        f"{args.clock} clock; palmloop's bf16 products through {products}"
    )
    all_results = {
        name: run_size(next(s for s in SIZES if s.name == name), args, peak) for name in names
    }
    print(
        f"matmul rates (best seen during the run): bf16 {peak.bf16:.0f} GFLOP/s, float32 "
        f"{peak.fp32:.0f} GFLOP/s; MFU against {peak.peak:.0f}"
    )
    figures: dict[str, Any] = {
        "torch": torch.__version__,
        "threads": args.threads,
        "clock": args.clock,
        "batch": BATCH,
        "seq": SEQ,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "bf16_matmul_gflops": peak.bf16,
        "fp32_matmul_gflops": peak.fp32,
        "peak_gflops": peak.peak,
        "ours_bf16_products": chosen_way(),
        "sizes": {
            name: summarise(name, results, peak.peak) for name, results in all_results.items()
        },
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
