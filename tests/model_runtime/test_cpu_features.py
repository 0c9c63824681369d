"""Native bf16 is read from the CPU's flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_runtime.cpu_features import cpu_has_native_bf16


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n", False),  # AVX-512 alone
        ("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n", True),
        ("flags\t\t: fpu avx512f amx_tile amx_bf16\n", True),
        ("flags\t\t: fpu avx2 avx512_bf16_extra\n", False),  # whole flags only
        ("processor\t: 0\nFeatures\t: fp asimd bf16\n", True),  # not x86: not asked
        (None, True),  # no /proc/cpuinfo
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(
    cpuinfo: str | None, native: bool, tmp_path: Path
) -> None:
    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    assert cpu_has_native_bf16(path) is native
