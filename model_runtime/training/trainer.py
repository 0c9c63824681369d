"""The trainer: pretraining and SFT of a PaLM policy, resumable, one process or many (DDP).

A plain class: ``setup()`` (tokenizer, data, model, optimizer; resumes when ``output_dir`` holds
a checkpoint), ``train()``, ``evaluate()``, ``save_state()`` / ``load_state()``.

One optimizer step takes ``grad_accum_steps`` global micro-batches of ``batch_size`` rows, each
split between the ranks. The loss of a step is the mean next-token cross-entropy over every
labelled position of the whole step (all micro-batches, all ranks): each micro-batch adds
``sum of its token losses / labelled positions of the step``, so the gradient does not depend
on how the rows are spread over micro-batches and processes. (DDP averages gradients over
ranks, so each rank scales its part by ``world_size``.)

Files under ``output_dir``:

    train_config.json           the config of the run
    tokenizer.json              when the run trained its own tokenizer
    data_cache/                 tokenized rows, reused by a resumed run
    metrics.jsonl               one JSON object per line: {"kind": "train" | "eval", "step", ...}
    checkpoints/step_0000100/   a model checkpoint (model_runtime.checkpoints) plus
                                trainer_state.pt (optimizer, step, data position, RNG states)
                                and trainer_state.json (its sha256, a readable summary)
    latest.json                 the last complete checkpoint (written last, by atomic rename:
                                a run killed while saving resumes from the one before)
    final/                      the model at the end of the run, with its eval metrics

Resuming restores weights, optimizer moments, the step (the learning rate is a function of it),
the data position and the RNG states, so a resumed run takes the same steps as an uninterrupted
one: on the same machine and thread count, bit-identical weights and losses.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model_runtime import bf16_products
from model_runtime.allocator import keep_freed_memory
from model_runtime.checkpoints import load_checkpoint, save_checkpoint
from model_runtime.palm import PaLM
from model_runtime.tokenizer import ChatTokenizer
from model_runtime.training import data as data_lib
from model_runtime.training import state as state_lib
from model_runtime.training.config import ComputePrecision, TrainConfig
from model_runtime.training.data import Batch, BatchOrder, TokenRows
from model_runtime.training.distributed import (
    DistributedContext,
    all_reduce_sum,
    barrier,
    broadcast_flag,
    init_distributed,
    shutdown,
    wrap_model,
)
from model_runtime.training.inputs import TrainingData, load_tokenizer, load_training_data
from model_runtime.training.schedule import WarmupCosine
from model_runtime.training.state import ResumeError
from model_runtime.training.step import (
    CausalLMLoss,
    build_adamw,
    freeze_all_but_last_blocks,
    resolve_precision,
)

__all__ = ["EvalResult", "ResumeError", "TrainResult", "Trainer", "run_training"]

CONFIG_COPY_FILE = "train_config.json"
FINAL_DIR = "final"
# Settings that fix which rows each step reads: a resumed run must keep them.
_DATA_POSITION_KEYS = ("stage", "seq_len", "batch_size", "grad_accum_steps", "seed", "sft_packing")


@dataclass(frozen=True)
class EvalResult:
    """Mean next-token loss (nats) over ``tokens`` held-out targets, and its exp."""

    loss: float
    perplexity: float
    tokens: int


@dataclass(frozen=True)
class TrainResult:
    """What one ``train()`` call did: ``step`` optimizer steps done in all, ``losses`` of the
    steps taken in this call, the last evaluation and checkpoint, and whether ``max_steps``
    was reached."""

    step: int
    losses: tuple[float, ...]
    eval: EvalResult | None
    checkpoint: Path | None
    finished: bool


@dataclass(frozen=True)
class _Parts:
    """What setup() builds; the trainer's methods need all of it."""

    context: DistributedContext
    model: PaLM  # the plain module: saved, loaded, evaluated
    train_model: nn.Module  # CausalLMLoss(model), in DDP and/or compiled: (inputs, labels) -> loss
    optimizer: torch.optim.AdamW
    tokenizer: ChatTokenizer
    data: TrainingData
    order: BatchOrder
    precision: ComputePrecision  # the config's, "auto" resolved on this device


class Trainer:
    """Train a PaLM as configured by a :class:`TrainConfig`; see the module docstring."""

    def __init__(self, config: TrainConfig, *, context: DistributedContext | None = None) -> None:
        self.config = config
        self._given_context = context
        self._parts: _Parts | None = None
        self.step = 0  # optimizer steps done
        self.micro_step = 0  # global micro-batches consumed: the data position
        self.tokens_seen = 0  # input positions processed, all ranks together
        self.last_checkpoint: Path | None = None
        self.last_eval: EvalResult | None = None
        self.schedule = WarmupCosine(
            peak_lr=config.lr,
            min_lr=config.min_lr,
            warmup_steps=config.warmup_steps,
            total_steps=config.max_steps,
        )

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def parts(self) -> _Parts:
        if self._parts is None:
            raise RuntimeError("call Trainer.setup() first")
        return self._parts

    @property
    def model(self) -> PaLM:
        return self.parts.model

    @property
    def tokenizer(self) -> ChatTokenizer:
        return self.parts.tokenizer

    @property
    def train_rows(self) -> TokenRows:
        return self.parts.data.train

    @property
    def eval_rows(self) -> TokenRows | None:
        return self.parts.data.eval

    # --- setup --------------------------------------------------------------------------

    def setup(self) -> None:
        """Build tokenizer, data, model and optimizer; resume from the last checkpoint in
        ``output_dir`` when ``config.resume`` and there is one."""
        config = self.config
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        keep_freed_memory()  # a step's big temporaries: reused, not faulted in again
        context = self._given_context or init_distributed(config.device)
        if config.batch_size % context.world_size != 0:
            raise ValueError(
                f"batch_size {config.batch_size} must be a multiple of the {context.world_size} "
                "processes (each takes an equal share of every batch)"
            )
        state_lib.seed_everything(config.seed)
        if context.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        barrier(context)
        tokenizer = load_tokenizer(config, context)
        data = load_training_data(config, tokenizer, context)
        model = self._build_model(tokenizer, context.device)
        if config.train_last_blocks is not None:
            freeze_all_but_last_blocks(model, config.train_last_blocks)
        model.train()
        if context.device.type == "cpu" and config.precision != "fp32":
            # how bf16 products are computed (and so what "auto" means): rank 0 measures alone,
            # every rank takes its choice, so that all compute the same numbers
            measured = bf16_products.float32_faster() if context.is_main else False
            bf16_products.settle(broadcast_flag(measured, context))
        precision = resolve_precision(config.precision, context.device)
        train_model = wrap_model(CausalLMLoss(model, precision), context)
        if config.compile:
            train_model = torch.compile(train_model)  # type: ignore[assignment]
        optimizer = build_adamw(
            model,
            lr=config.lr,
            weight_decay=config.weight_decay,
            betas=(config.beta1, config.beta2),
            eps=config.eps,
        )
        self._parts = _Parts(
            context=context,
            model=model,
            train_model=train_model,
            optimizer=optimizer,
            tokenizer=tokenizer,
            data=data,
            order=BatchOrder(len(data.train), config.batch_size, config.seed),
            precision=precision,
        )
        latest = state_lib.read_latest(self.output_dir)
        if config.resume and latest is not None:
            self.load_state(latest)
        if context.is_main:
            state_lib.write_json(self.output_dir / CONFIG_COPY_FILE, config.to_dict())
            state_lib.truncate_metrics(self.output_dir, last_step=self.step)

    def _build_model(self, tokenizer: ChatTokenizer, device: torch.device) -> PaLM:
        config = self.config
        if config.init_from is not None:
            model = load_checkpoint(config.init_from, device=device, dtype=torch.float32).model
        else:
            torch.manual_seed(config.seed)
            model = PaLM(config.model_config(vocab_size=tokenizer.vocab_size)).to(device)
        if model.config.vocab_size < tokenizer.vocab_size:
            raise ValueError(
                f"the model's vocab_size {model.config.vocab_size} is smaller than the "
                f"tokenizer's {tokenizer.vocab_size}"
            )
        if config.seq_len > model.config.max_seq_len:
            raise ValueError(
                f"seq_len {config.seq_len} exceeds the model's max_seq_len "
                f"{model.config.max_seq_len}"
            )
        return model

    # --- training -----------------------------------------------------------------------

    def _local_batch(self, micro_step: int) -> Batch:
        parts = self.parts
        rows = parts.order.rows(micro_step)
        local = data_lib.shard(rows, parts.context.rank, parts.context.world_size)
        return parts.data.train.batch(local).to(parts.context.device)

    def train_step(self) -> tuple[float, float, int]:
        """One optimizer step; returns (mean loss of the step, gradient norm before clipping,
        labelled positions of the step over all ranks)."""
        parts, config = self.parts, self.config
        context = parts.context
        for group in parts.optimizer.param_groups:
            group["lr"] = self.schedule(self.step)
        batches = [self._local_batch(self.micro_step + i) for i in range(config.grad_accum_steps)]
        local_targets = torch.tensor([sum(batch.num_targets for batch in batches)])
        total_targets = int(all_reduce_sum(local_targets, context).item())
        scale = context.world_size / max(total_targets, 1)
        loss_sum = torch.zeros((), device=context.device)
        for index, batch in enumerate(batches):
            with _no_sync_unless(parts.train_model, index == len(batches) - 1):
                batch_loss = parts.train_model(batch.inputs, batch.labels)  # summed, scalar
                torch.autograd.backward(batch_loss * scale)
            loss_sum += batch_loss.detach()
        params = [p for p in parts.model.parameters() if p.requires_grad]
        max_norm = config.grad_clip if config.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
        total_loss = float(all_reduce_sum(loss_sum, context).item())
        self.step += 1
        self.micro_step += config.grad_accum_steps
        self.tokens_seen += config.tokens_per_step
        return total_loss / max(total_targets, 1), grad_norm, total_targets

    def train(self, *, max_new_steps: int | None = None) -> TrainResult:
        """Train to ``max_steps``, evaluating and saving on the configured schedule, then
        evaluate, save and write ``final/``. ``max_new_steps`` stops after that many steps of
        this call with no extra save: what a run killed at that point leaves behind."""
        config, context = self.config, self.parts.context
        losses: list[float] = []
        bar = tqdm(
            total=config.max_steps,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            disable=not (config.progress_bar and context.is_main),
        )
        window: list[float] = []
        window_start = time.perf_counter()
        try:
            while self.step < config.max_steps:
                if max_new_steps is not None and len(losses) >= max_new_steps:
                    return self._result(losses, finished=False)
                loss, grad_norm, targets = self.train_step()
                losses.append(loss)
                window.append(loss)
                bar.update(1)
                finishing = self.step == config.max_steps
                if self.step % config.log_every == 0 or finishing:
                    seconds = time.perf_counter() - window_start
                    rate = len(window) * config.tokens_per_step / max(seconds, 1e-9)
                    mean_loss = sum(window) / len(window)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{rate:,.0f}")
                    self._log(
                        kind="train",
                        loss=mean_loss,
                        lr=self.schedule(self.step - 1),
                        grad_norm=grad_norm,
                        targets=targets,
                        tokens_seen=self.tokens_seen,
                        tokens_per_s=rate,
                        epoch=self.parts.order.epoch_of(self.micro_step),
                    )
                    window, window_start = [], time.perf_counter()
                if config.eval_every and self.step % config.eval_every == 0 and not finishing:
                    self.evaluate()
                if config.save_every and self.step % config.save_every == 0 and not finishing:
                    self.save_state()
            self.evaluate()
            if self.last_checkpoint != state_lib.checkpoint_dir(self.output_dir, self.step):
                self.save_state()
            self._write_final()
            return self._result(losses, finished=True)
        finally:
            bar.close()

    def _result(self, losses: list[float], *, finished: bool) -> TrainResult:
        return TrainResult(
            step=self.step,
            losses=tuple(losses),
            eval=self.last_eval,
            checkpoint=self.last_checkpoint,
            finished=finished,
        )

    def evaluate(self) -> EvalResult | None:
        """Mean loss and perplexity on the held-out rows (``eval_batches`` global batches at
        most, in a fixed order); None when the run has no held-out data."""
        parts, config = self.parts, self.config
        context, model, rows = parts.context, parts.model, parts.data.eval
        if rows is None:
            return None
        batches = math.ceil(len(rows) / config.batch_size)
        if config.eval_batches is not None:
            batches = min(batches, config.eval_batches)
        sums = torch.zeros(2, dtype=torch.float64)  # loss sum, labelled positions
        loss_of = CausalLMLoss(model, parts.precision)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for index in range(batches):
                stop = min(len(rows), (index + 1) * config.batch_size)
                global_rows = np.arange(index * config.batch_size, stop, dtype=np.int64)
                local = data_lib.shard(global_rows, context.rank, context.world_size)
                if len(local) == 0:
                    continue
                batch = rows.batch(local).to(context.device)
                sums[0] += float(loss_of(batch.inputs, batch.labels))
                sums[1] += batch.num_targets
        model.train(was_training)
        total = all_reduce_sum(sums.to(context.device), context).cpu()
        tokens = int(total[1].item())
        loss = float(total[0].item()) / max(tokens, 1)
        result = EvalResult(loss=loss, perplexity=math.exp(min(loss, 700.0)), tokens=tokens)
        self.last_eval = result
        self._log(
            kind="eval",
            eval_loss=result.loss,
            eval_perplexity=result.perplexity,
            eval_tokens=result.tokens,
        )
        return result

    # --- checkpoints --------------------------------------------------------------------

    def _metrics_summary(self) -> dict[str, Any]:
        metrics: dict[str, Any] = {
            "step": self.step,
            "stage": self.config.stage,
            "precision": self.parts.precision,
        }
        if self.parts.precision == "bf16" and self.parts.context.device.type == "cpu":
            # how this machine computed the bf16 products (bf16_products): same numbers, speed
            metrics["bf16_products"] = bf16_products.chosen_way()
        if self.last_eval is not None:
            metrics.update(
                eval_loss=self.last_eval.loss,
                eval_perplexity=self.last_eval.perplexity,
                eval_tokens=self.last_eval.tokens,
            )
        return metrics

    def save_state(self) -> Path:
        """Write ``checkpoints/step_N`` (model + trainer state), point ``latest.json`` at it
        and drop checkpoints beyond ``keep_checkpoints``. Rank 0 writes; every rank waits."""
        parts = self.parts
        directory = state_lib.checkpoint_dir(self.output_dir, self.step)
        if parts.context.is_main:
            save_checkpoint(
                parts.model,
                directory,
                tokenizer_json=parts.tokenizer.to_str(),
                metrics=self._metrics_summary(),
            )
            trainer_state = {
                "format_version": state_lib.STATE_FORMAT_VERSION,
                "step": self.step,
                "micro_step": self.micro_step,
                "tokens_seen": self.tokens_seen,
                "optimizer": parts.optimizer.state_dict(),
                "rng": state_lib.rng_state(),
                "data": {"rows": len(self.train_rows), "targets": self.train_rows.num_targets},
                "config": json.dumps(self.config.to_dict(), sort_keys=True),
            }
            summary = {
                "step": self.step,
                "micro_step": self.micro_step,
                "tokens_seen": self.tokens_seen,
                "world_size": parts.context.world_size,
            }
            state_lib.write_trainer_state(directory, trainer_state, summary)
            state_lib.publish_latest(self.output_dir, directory, self.step)
            state_lib.prune_checkpoints(
                self.output_dir, keep_last=self.config.keep_checkpoints, protect=directory
            )
        barrier(parts.context)
        self.last_checkpoint = directory
        return directory

    def load_state(self, directory: Path) -> None:
        """Restore weights, optimizer, step, data position and RNG states from a checkpoint
        written by :meth:`save_state`. ``ResumeError`` when it cannot continue this run
        (another model shape, other batch settings, other data, a corrupted file)."""
        parts = self.parts
        directory = Path(directory)
        trainer_state = state_lib.read_trainer_state(directory)
        loaded = load_checkpoint(directory, device=parts.context.device, dtype=torch.float32)
        if loaded.config != parts.model.config:
            raise ResumeError(
                f"{directory}: the checkpoint's model {loaded.config} differs from this "
                f"run's {parts.model.config}"
            )
        saved_config = json.loads(trainer_state["config"])
        current = self.config.to_dict()
        for key in _DATA_POSITION_KEYS:
            if saved_config.get(key) != current[key]:
                raise ResumeError(
                    f"{directory}: {key} was {saved_config.get(key)!r}, is now "
                    f"{current[key]!r}; the data position would not mean the same rows"
                )
        saved_data = trainer_state["data"]
        now = {"rows": len(self.train_rows), "targets": self.train_rows.num_targets}
        if dict(saved_data) != now:
            raise ResumeError(
                f"{directory}: the training data changed since this checkpoint "
                f"({saved_data} then, {now} now)"
            )
        with torch.no_grad():
            source = loaded.model.state_dict()
            for name, tensor in parts.model.state_dict().items():
                tensor.copy_(source[name])
        parts.optimizer.load_state_dict(trainer_state["optimizer"])
        self.step = int(trainer_state["step"])
        self.micro_step = int(trainer_state["micro_step"])
        self.tokens_seen = int(trainer_state["tokens_seen"])
        state_lib.set_rng_state(trainer_state["rng"])
        self.last_checkpoint = directory

    def _write_final(self) -> None:
        parts = self.parts
        if parts.context.is_main:
            save_checkpoint(
                parts.model,
                self.output_dir / FINAL_DIR,
                tokenizer_json=parts.tokenizer.to_str(),
                metrics=self._metrics_summary(),
            )
        barrier(parts.context)

    def _log(self, **record: Any) -> None:
        if self.parts.context.is_main:
            state_lib.append_metrics(self.output_dir, {"step": self.step, **record})

    def close(self) -> None:
        """Leave the process group if :meth:`setup` joined it."""
        if self._parts is not None and self._given_context is None:
            shutdown(self._parts.context)


def run_training(config: TrainConfig) -> TrainResult:
    """Set up, train to the end, close: what ``python -m model_runtime train`` runs."""
    trainer = Trainer(config)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.close()


def _no_sync_unless(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP's ``no_sync()`` for the micro-batches before the last of a step (their gradients are
    summed locally and all-reduced once, with the last one's); a no-op otherwise."""
    no_sync = getattr(model, "no_sync", None)
    if sync or no_sync is None:
        return contextlib.nullcontext()
    context: contextlib.AbstractContextManager[Any] = no_sync()
    return context
