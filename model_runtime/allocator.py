"""Keep freed memory in the process: glibc's malloc tuned for training's large, short-lived tensors.

PyTorch allocates CPU tensors with the C library's malloc and frees them when their last
reference goes. glibc serves a block of more than ``M_MMAP_THRESHOLD`` bytes (128 KiB at first)
with a fresh ``mmap`` and unmaps it on free, and gives the top of its heap back to the kernel
once more than ``M_TRIM_THRESHOLD`` is free there. A training step allocates and frees
megabytes of activations, logits and gradients every time, so each new tensor lands on pages the
kernel must fault in and zero again. Measured here (2 threads, bf16): the cross-entropy of one
256 x 8,192 block of logits took 7.9 ms with the default settings and 3.3 ms with freed memory
kept (the same work, 1.2 ms of it the matmul); a 40M-parameter training step 941 -> 876 ms,
a 10M one 301 -> 291 ms. Inference was no faster (a decode step allocates little).

The price: freed memory stays with the process, up to :data:`TRIM_THRESHOLD_BYTES` at the top of
its heap, instead of going back to the system. A training process's memory is its peak anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache

# mallopt(3) parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap, where freed ones are reused (glibc's maximum).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# Free memory at the top of the heap is given back only beyond this.
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024


@cache
def keep_freed_memory() -> bool:
    """Tune glibc's malloc (once per process) so that freed blocks up to 32 MiB are reused rather
    than returned to the kernel. True when the C library took both settings; False elsewhere (not
    Linux, or a C library without ``mallopt``, such as musl's, which ignores it)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; the trim threshold only after the mmap one took
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    )
