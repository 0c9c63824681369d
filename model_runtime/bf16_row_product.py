"""bf16 products of one or two rows (a decoding step at batch 1 or 2) through palmloop's own
CPU kernel.

A decoding step multiplies one row per sequence by every weight matrix, so at a small batch its
speed is how fast the weights stream from memory. oneDNN's packed bf16 product (``packed_linear``)
read them at 20-25 GB/s on a 2-core Zen 4, where a plain sum over the same matrices reads
31-39 GB/s; the kernel in ``csrc/bf16_row_product.cpp`` (AVX512-BF16 dot products, each thread
streaming a contiguous range of weight rows) reads them at 30-38 GB/s there: 1.3-1.5x for one
row and for two. For four rows it was no faster than oneDNN, so :data:`MAX_ROWS` is 2.

The kernel is compiled by ``torch.utils.cpp_extension`` (g++ and ninja, ~30 s) the first time a
process asks for it, and cached (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``) for every later process; ``make install`` builds it
(``python -m model_runtime build-kernels``). It is used only where it can run: an x86 CPU with
AVX512-BF16 and AVX512-BW, and ``PALMLOOP_ROW_KERNEL`` not ``0``. Anything that stops the build
(no compiler, another CPU) leaves oneDNN's products in charge, with one warning.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch

from model_runtime.cpu_features import cpu_flags

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "bf16_row_product.cpp"
EXTENSION_NAME = "palmloop_bf16_row_product"
SWITCH = "PALMLOOP_ROW_KERNEL"  # "0" turns the kernel off
REQUIRED_CPU_FLAGS = frozenset({"avx512f", "avx512bw", "avx512_bf16"})
MAX_ROWS = 2  # input rows the kernel takes
# A build's lock file older than this was left by a build that died (torch waits on it forever).
STALE_LOCK_SECONDS = 600.0

_lock = threading.Lock()
_module: ModuleType | None = None
_settled = False  # load() has decided, one way or the other
_why_not: str | None = None


def why_unavailable() -> str | None:
    """Why the kernel is not in use (None while it is, or before :func:`load` decided)."""
    return _why_not


def load() -> ModuleType | None:
    """The compiled kernel, built now if it is not cached yet (blocking); None where it cannot
    run. Decided once per process; safe to call from several threads."""
    global _module, _settled, _why_not
    if _settled:
        return _module
    with _lock:
        if _settled:
            return _module
        reason = _reason_not_to_build()
        if reason is None:
            try:
                _module = _build()
            except Exception as error:  # any build failure means: decode with oneDNN
                reason = f"it could not be built ({type(error).__name__}: {error})"
        if reason is not None:
            _why_not = reason
            logger.warning(
                "bf16 decoding kernel not in use: %s; decoding uses oneDNN's products", reason
            )
        _settled = True
    return _module


def row_product_sum(
    inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]
) -> torch.Tensor | None:
    """``sum_i inputs[i] @ weights[i].T`` for inputs (..., K_i) of the same one or two rows
    (:data:`MAX_ROWS`) and contiguous bf16 CPU weights (N, K_i) -> (..., N) bf16, through the
    kernel; None where the kernel is not available or the tensors do not suit it (the caller
    falls back)."""
    module = load()
    if module is None or not _suitable(inputs, weights):
        return None
    out: torch.Tensor = module.row_product_sum(list(inputs), list(weights))
    return out.view(*inputs[0].shape[:-1], weights[0].shape[0])


def _suitable(inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> bool:
    rows_out = weights[0].shape[0] if weights[0].dim() == 2 else -1
    rows_in = inputs[0].shape[:-1].numel()
    return 1 <= rows_in <= MAX_ROWS and all(
        x.dtype == torch.bfloat16
        and x.is_cpu
        and x.shape[:-1].numel() == rows_in
        and w.dtype == torch.bfloat16
        and w.is_cpu
        and w.dim() == 2
        and w.is_contiguous()
        and w.shape == (rows_out, x.shape[-1])
        for x, w in zip(inputs, weights, strict=True)
    )


def _reason_not_to_build() -> str | None:
    if os.environ.get(SWITCH, "1").strip().lower() in {"0", "off", "false", "no"}:
        return f"{SWITCH} turns it off"
    missing = REQUIRED_CPU_FLAGS - cpu_flags()
    if missing:
        return f"this CPU lacks {', '.join(sorted(missing))}"
    return None


def _build() -> ModuleType:
    from torch.utils.cpp_extension import _get_build_directory, load

    _with_ninja_on_path()
    _remove_stale_lock(Path(_get_build_directory(EXTENSION_NAME, verbose=False)))
    started = time.monotonic()
    module: ModuleType = load(
        name=EXTENSION_NAME,
        sources=[str(SOURCE)],
        extra_cflags=["-O3", "-fopenmp"],  # OpenMP: torch's parallel_for, torch's own libgomp
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )
    seconds = time.monotonic() - started
    if seconds > 5:
        logger.info("built the bf16 decoding kernel in %.0f s", seconds)
    return module


def _with_ninja_on_path() -> None:
    """torch runs ``ninja`` from PATH; the ninja wheel (a dependency) puts it in the venv, which
    is not on PATH when the venv's python is run by its path."""
    try:
        import ninja
    except ImportError:  # a system ninja may still be there
        return
    paths = os.environ.get("PATH", "").split(os.pathsep)
    if ninja.BIN_DIR not in paths:
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, *paths])


def _remove_stale_lock(build_directory: Path) -> None:
    lock = build_directory / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    if age > STALE_LOCK_SECONDS:
        logger.warning("removing %s, left %.0f s ago by a build that did not finish", lock, age)
        lock.unlink(missing_ok=True)
