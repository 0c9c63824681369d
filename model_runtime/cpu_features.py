"""What the CPU computes in hardware, for the choices that depend on it.

bf16 is fast on a CPU only where it is native: x86 AVX512-BF16 or AMX, where oneDNN's bf16
matmuls ran ~4x float32. Elsewhere oneDNN emulates it, and a compute-bound bf16 matmul ran 2.4x
slower than float32 (a 2-core AVX-512 Xeon without BF16: 44 against 107 GFLOP/s at 1024^3).
Native is not always faster than float32 either (an Intel Xeon VM with AVX512-BF16 but no AMX:
162 against 310 GFLOP/s): :mod:`bf16_products` measures which way bf16 products should go.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@cache
def native_bf16_cpu() -> bool:
    """Whether this machine's CPU multiplies bf16 in hardware (read once)."""
    return cpu_has_native_bf16(Path("/proc/cpuinfo"))


@cache
def cpu_flags() -> frozenset[str]:
    """The x86 feature flags of this machine's CPU (empty where /proc/cpuinfo lists none)."""
    return read_cpu_flags(Path("/proc/cpuinfo")) or frozenset()


def read_cpu_flags(cpuinfo: Path) -> frozenset[str] | None:
    """The ``flags`` of the first CPU in ``cpuinfo``; None without that file or that line."""
    try:
        with cpuinfo.open(encoding="ascii", errors="replace") as info:
            flags = next((line for line in info if line.startswith("flags")), None)
    except OSError:
        return None
    if flags is None:
        return None
    return frozenset(flags.partition(":")[2].split())


def cpu_has_native_bf16(cpuinfo: Path) -> bool:
    """Whether ``cpuinfo`` (Linux's ``/proc/cpuinfo``) lists an x86 flag of hardware bf16.
    Only x86 is asked: without that file or its x86 ``flags`` line (another OS, ARM), bf16
    counts as native, which keeps bf16 wherever a caller asks for it."""
    flags = read_cpu_flags(cpuinfo)
    return flags is None or bool(_NATIVE_BF16_FLAGS & flags)
