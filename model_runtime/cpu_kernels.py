"""palmloop's own CPU kernels (``csrc/``): built once, loaded once per process.

Five kernels for bf16 work on x86 CPUs with AVX512-BF16, compiled into one extension:

- ``row_product_sum`` (``csrc/bf16_row_product.cpp``, used by :mod:`bf16_row_product`): products
  of one or two rows, a decoding step at batch 1 or 2;
- ``swiglu_into`` and ``rotate_qk`` (``csrc/bf16_pointwise.cpp``, used by
  :mod:`bf16_pointwise`): a block's SwiGLU and its rotary embedding, each in one pass;
- ``prefill_attention`` (``csrc/bf16_prefill_attention.cpp``, used by
  :mod:`bf16_prefill_attention`): causal multi-query attention of a prefill;
- ``cross_entropy_rows`` (``csrc/bf16_cross_entropy.cpp``, used by :mod:`bf16_cross_entropy`):
  the trainer's loss and its logits' gradient, one pass per row.

They have no backward pass and ``torch.compile`` cannot trace into them: :func:`load_for` gives
them only to an eager call that needs no gradient (the trainer's loss computes its gradient
itself, inside its autograd function, and runs eagerly in a compiled step).

The extension is compiled by ``torch.utils.cpp_extension`` (g++ and ninja, ~40 s) the first time
a process asks for it, and cached (``TORCH_EXTENSIONS_DIR``, default
``~/.cache/torch_extensions``) for every later process; ``make install`` builds it
(``python -m model_runtime build-kernels``). It is used only where it can run: an x86 CPU with
AVX512-BF16, AVX512-BW and AVX512-VL, and ``PALMLOOP_CPU_KERNELS`` not ``0``. Anything that stops
the build (no compiler, another CPU) leaves torch's own operations (oneDNN's products) in
charge, with one warning.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

from model_runtime.cpu_features import cpu_flags

logger = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).with_name("csrc")
SOURCES = (
    "module.cpp",
    "bf16_row_product.cpp",
    "bf16_pointwise.cpp",
    "bf16_prefill_attention.cpp",
    "bf16_cross_entropy.cpp",
)
EXTENSION_NAME = "palmloop_cpu_kernels"
SWITCH = "PALMLOOP_CPU_KERNELS"  # "0" turns the kernels off
REQUIRED_CPU_FLAGS = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512_bf16"})
# A build's lock file older than this was left by a build that died (torch waits on it forever).
STALE_LOCK_SECONDS = 600.0

_lock = threading.Lock()
_module: ModuleType | None = None
_settled = False  # load() has decided, one way or the other
_why_not: str | None = None


def why_unavailable() -> str | None:
    """Why the kernels are not in use (None while they are, or before :func:`load` decided)."""
    return _why_not


def load_for(*tensors: torch.Tensor) -> ModuleType | None:
    """:func:`load` for a call on ``tensors`` outside autograd and outside ``torch.compile``'s
    tracing; None inside either."""
    if torch.compiler.is_compiling():
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    return load()


def load() -> ModuleType | None:
    """The compiled kernels, built now if they are not cached yet (blocking); None where they
    cannot run. Decided once per process; safe to call from several threads."""
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
            except Exception as error:  # any build failure means: torch's operations
                reason = f"they could not be built ({type(error).__name__}: {error})"
        if reason is not None:
            _why_not = reason
            logger.warning(
                "palmloop's CPU kernels not in use: %s; torch's operations run instead", reason
            )
        _settled = True
    return _module


def _reason_not_to_build() -> str | None:
    if os.environ.get(SWITCH, "1").strip().lower() in {"0", "off", "false", "no"}:
        return f"{SWITCH} turns them off"
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
        sources=[str(SOURCE_DIR / source) for source in SOURCES],
        extra_include_paths=[str(SOURCE_DIR)],
        extra_cflags=["-O3", "-fopenmp"],  # OpenMP: torch's parallel_for, torch's own libgomp
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )
    seconds = time.monotonic() - started
    if seconds > 5:
        logger.info("built palmloop's CPU kernels in %.0f s", seconds)
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
