"""The frozen configuration of a training run, read from a JSON file.

One JSON object, one key per :class:`TrainConfig` field. Unknown keys, missing required keys and
values of the wrong type are refused with a ``ValueError`` that names the key (and the file).
Relative paths are taken relative to the working directory the run starts in.

Batch sizes are global: ``batch_size`` sequences per micro-batch over all processes together
(each of the ``world_size`` processes of a distributed run takes ``batch_size / world_size`` of
them), and ``grad_accum_steps`` micro-batches per optimizer step, so one optimizer step sees
``batch_size * grad_accum_steps`` sequences however many processes share the work.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from model_runtime.config import CONFIG_FORMAT_VERSION, PaLMConfig

Stage = Literal["pretrain", "sft"]
Precision = Literal["auto", "bf16", "fp32"]
ComputePrecision = Literal["bf16", "fp32"]  # what "auto" resolves to on a device


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; see the module docstring for the meaning of batch sizes.

    Data: ``train_files`` (glob patterns allowed) are ``.jsonl`` files, one JSON object per line
    (``{"text": ...}`` for ``pretrain``, ``{"messages": [{"role", "content"}, ...]}`` for
    ``sft``), or, for ``pretrain`` only, plain text files holding one document each. The held-out
    split is ``eval_files`` when given, else an ``eval_fraction`` of the training documents.

    Model: ``init_from`` (a checkpoint directory, e.g. the pretrained model for SFT) or ``model``
    (PaLMConfig fields; ``vocab_size`` may be left out to take the tokenizer's). Tokenizer:
    ``tokenizer`` (a tokenizer.json or its directory), else the one inside ``init_from``, else one
    trained on the training files with ``tokenizer_vocab_size`` ids.
    """

    stage: Stage
    output_dir: Path
    train_files: tuple[str, ...]
    seq_len: int
    batch_size: int
    max_steps: int
    lr: float
    model: Mapping[str, Any] | None = None
    init_from: Path | None = None
    tokenizer: Path | None = None
    tokenizer_vocab_size: int | None = None
    eval_files: tuple[str, ...] = ()
    # {training file path: n}: that file's items appear n times in the training split (upsamples
    # a small source, e.g. a distilled SFT set beside a large chit-chat one); others once.
    repeat_files: Mapping[str, Any] | None = None
    eval_fraction: float = 0.0
    eval_every: int = 0  # optimizer steps between evaluations; 0 = only at the end
    eval_batches: int | None = None  # cap on held-out batches per evaluation; None = all
    grad_accum_steps: int = 1
    min_lr: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global L2 norm of the gradient; None = no clipping
    # bf16 = torch.autocast (weights and optimizer stay fp32); auto = bf16 where the device
    # computes it natively and faster than fp32, else fp32 (training.step.resolve_precision)
    precision: Precision = "auto"
    train_last_blocks: int | None = None  # train only the last N blocks; None = everything
    sft_packing: bool = True  # several conversations per row (EOS between) instead of one
    save_every: int = 0  # optimizer steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2
    log_every: int = 1
    seed: int = 0
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda"
    num_threads: int | None = None  # torch.set_num_threads; None = leave torch's default
    compile: bool = False  # torch.compile the model
    progress_bar: bool = True
    resume: bool = True  # continue from output_dir's last checkpoint when there is one

    def __post_init__(self) -> None:
        positive = ("seq_len", "batch_size", "max_steps", "grad_accum_steps", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "save_every", "warmup_steps", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_checkpoints < 1:
            raise ValueError(
                f"TrainConfig.keep_checkpoints must be >= 1, got {self.keep_checkpoints}"
            )
        for name in ("eval_batches", "tokenizer_vocab_size", "train_last_blocks", "num_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1 or null, got {value}")
        if not self.train_files:
            raise ValueError("TrainConfig.train_files must name at least one file")
        for path, times in (self.repeat_files or {}).items():
            if isinstance(times, bool) or not isinstance(times, int) or times < 1:
                raise ValueError(
                    f"TrainConfig.repeat_files[{path!r}] must be an integer >= 1, got {times!r}"
                )
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(
                f"TrainConfig.eval_fraction must be in [0, 1), got {self.eval_fraction}"
            )
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(
                f"TrainConfig needs 0 <= min_lr <= lr and lr > 0, got lr={self.lr} "
                f"min_lr={self.min_lr}"
            )
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0) or self.eps <= 0:
            raise ValueError("TrainConfig needs beta1, beta2 in [0, 1) and eps > 0")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"TrainConfig.grad_clip must be > 0 or null, got {self.grad_clip}")
        if (self.model is None) == (self.init_from is None):
            raise ValueError("TrainConfig needs exactly one of 'model' and 'init_from'")
        if self.tokenizer is None and self.init_from is None and self.tokenizer_vocab_size is None:
            raise ValueError(
                "TrainConfig needs a tokenizer: 'tokenizer', 'init_from' (its tokenizer.json) "
                "or 'tokenizer_vocab_size' (train one on the training files)"
            )
        if self.model is not None:
            try:
                self.model_config(vocab_size=self.model.get("vocab_size", 512))
            except (ValueError, TypeError) as error:
                raise ValueError(f"TrainConfig.model: {error}") from None
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"TrainConfig.device must be auto, cpu or cuda, got {self.device!r}")

    def model_config(self, *, vocab_size: int) -> PaLMConfig:
        """The PaLMConfig of ``model``, ``vocab_size`` filled in when the JSON leaves it out."""
        if self.model is None:
            raise ValueError("TrainConfig.model is not set (the model comes from init_from)")
        fields = {"format_version": CONFIG_FORMAT_VERSION, "vocab_size": vocab_size}
        return PaLMConfig.from_dict({**fields, **self.model})

    @property
    def tokens_per_step(self) -> int:
        """Token positions (inputs) per optimizer step, over all processes."""
        return self.batch_size * self.grad_accum_steps * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :meth:`from_dict` reads back to an equal config."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "train config") -> TrainConfig:
        """Build from a JSON object; ``ValueError`` (prefixed with ``source``) on any problem."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: must be a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(
                f"{source}: unknown keys {', '.join(unknown)} "
                f"(known keys: {', '.join(sorted(fields))})"
            )
        missing = sorted(
            name
            for name, f in fields.items()
            if name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ValueError(f"{source}: missing required keys {', '.join(missing)}")
        hints = typing.get_type_hints(cls)
        values = {
            name: _coerce(value, hints[name], f"{source}: {name}") for name, value in data.items()
        }
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def from_file(cls, path: Path) -> TrainConfig:
        """Read a JSON file (see :meth:`from_dict`)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON: {error}") from None
        return cls.from_dict(data, source=str(path))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated like a new config)."""
        return dataclasses.replace(self, **changes)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a JSON value against a field's type and convert it (list -> tuple, str -> Path)."""
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = get_args(hint)
        if value is None:
            if type(None) in options:
                return None
            raise ValueError(f"{where} must not be null")
        inner = [option for option in options if option is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported field type {hint}")  # a programming error
        return _coerce(value, inner[0], where)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise ValueError(
                f"{where} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
            )
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where} must be a non-empty path string, got {value!r}")
        return Path(value)
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ValueError(f"{where} must be a list of strings, got {value!r}")
        items = tuple(value)
        if not all(isinstance(item, str) and item for item in items):
            raise ValueError(f"{where} must be a list of non-empty strings, got {value!r}")
        return items
    if origin is Mapping:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} must be a JSON object, got {value!r}")
        return dict(value)
    raise TypeError(f"unsupported field type {hint}")  # a programming error
