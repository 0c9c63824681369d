"""DDP under torchrun: 2 CPU processes (gloo) follow the 1-process run on the same global batch.

Tolerance: losses within 1e-5 (absolute) and final weights within 1e-5, in fp32. The two runs
do the same arithmetic except for the order of float sums (each rank's half-batch matmuls, then
gloo's all-reduce of the gradients), which moves results by ~1e-7 per step here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from model_runtime.checkpoints import load_checkpoint
from model_runtime.training.config import TrainConfig
from model_runtime.training.state import read_metrics
from model_runtime.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[3]
TOLERANCE = 1e-5


def test_two_processes_match_one_on_the_same_global_batch(
    make_train_config: Callable[..., TrainConfig], tmp_path: Path
) -> None:
    # Global batch 4 rows x 2 accumulated micro-batches: each rank takes 2 rows of each.
    single = make_train_config(max_steps=4, precision="fp32", grad_accum_steps=2, eval_every=2)
    trainer = Trainer(single)
    trainer.setup()
    trainer.train()

    ddp = single.replace(output_dir=tmp_path / "ddp")
    path = tmp_path / "ddp.json"
    path.write_text(json.dumps(ddp.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "model_runtime.training", "--config", str(path),
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]

    ours, theirs = read_metrics(single.output_dir), read_metrics(ddp.output_dir)
    assert [(r["kind"], r["step"]) for r in ours] == [(r["kind"], r["step"]) for r in theirs]
    for a, b in zip(ours, theirs, strict=True):
        key = "loss" if a["kind"] == "train" else "eval_loss"
        assert abs(a[key] - b[key]) < TOLERANCE, (a, b)
        if a["kind"] == "train":
            assert a["targets"] == b["targets"]  # the same rows, split between the ranks
        else:
            assert a["eval_tokens"] == b["eval_tokens"]
    w1 = load_checkpoint(Path(single.output_dir) / "final").model.state_dict()
    w2 = load_checkpoint(Path(ddp.output_dir) / "final").model.state_dict()
    assert all(torch.allclose(w1[n], w2[n], atol=TOLERANCE, rtol=0) for n in w1)
    summary = json.loads(
        (Path(ddp.output_dir) / "checkpoints" / "step_0000004" / "trainer_state.json").read_text()
    )
    assert summary["world_size"] == 2  # really two processes in one group
