"""keep_freed_memory: blocks a training step frees are reused instead of faulted in again."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A cross-entropy block's temporaries (8 MiB of float32 logits, their log-softmax, a bf16 copy),
# made and freed over and over; prints the page faults of the last rounds.
_SCRIPT = """
import resource, sys, torch
from model_runtime.allocator import keep_freed_memory
print(keep_freed_memory())
h = torch.randn(256, 256, dtype=torch.bfloat16)
w = torch.randn(8192, 256, dtype=torch.bfloat16)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def block():
    logp = torch.log_softmax((h @ w.T).float(), dim=-1)
    return logp.exp_().to(torch.bfloat16)
for _ in range(20):
    block()
before = faults()
for _ in range(40):
    block()
print(faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_blocks_are_reused_without_page_faults() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True, timeout=120
    )
    took, faults = done.stdout.split()
    assert took == "True"
    # Without it, glibc maps and unmaps these blocks: ~4,000 faults a block (16 MiB touched),
    # tens of thousands here. With it, the blocks come back from the heap.
    assert int(faults) < 2_000, f"{faults} page faults in 40 blocks"
