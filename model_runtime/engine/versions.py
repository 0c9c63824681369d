"""Loading and verifying a model version for serving (used at start-up and by hot swap).

A version is accepted only when (1) ``load_checkpoint`` verified every file's size and sha256,
(2) it carries a tokenizer, identical to the serving one when there is one (queued prompts were
encoded with it, and must mean the same to the next version), and (3) a short greedy smoke
generation runs with finite logprobs. Anything else raises :class:`SwapError` and changes
nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from model_runtime.bf16_products import float32_faster
from model_runtime.checkpoints import CheckpointError, load_checkpoint
from model_runtime.engine.errors import SwapError
from model_runtime.engine.request import ModelVersion
from model_runtime.generation import generate
from model_runtime.palm import PaLM
from model_runtime.sampling import SamplingParams
from model_runtime.tokenizer import ChatMessage, ChatTokenizer, TokenizerFormatError

SMOKE_PROMPT = "Hello! Say something."


@dataclass(frozen=True, eq=False)
class LoadedVersion:
    """A model ready to serve: weights (eval mode, on the engine's device), its tokenizer and
    its identity. Compared by identity: loading the same directory twice gives two versions."""

    info: ModelVersion
    model: PaLM
    tokenizer: ChatTokenizer

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    @property
    def vocab(self) -> int:
        """Ids a prompt may hold and the model may emit: both model and tokenizer know them."""
        return min(self.model.config.vocab_size, self.tokenizer.vocab_size)


def load_version(
    directory: Path, *, device: str | torch.device, dtype: torch.dtype | None
) -> LoadedVersion:
    """Load a checkpoint directory (hash-verified by ``load_checkpoint``); SwapError if it is
    missing, corrupted, or has no tokenizer."""
    directory = Path(directory)
    try:
        loaded = load_checkpoint(directory, device=device, dtype=dtype)
    except (CheckpointError, OSError, ValueError) as error:
        raise SwapError(f"cannot load {directory}: {error}") from error
    if loaded.tokenizer_json is None:
        raise SwapError(f"{directory} holds no tokenizer.json")
    try:
        tokenizer = ChatTokenizer.from_str(loaded.tokenizer_json)
    except TokenizerFormatError as error:
        raise SwapError(f"{directory}: bad tokenizer: {error}") from error
    sha256 = loaded.meta.get("sha256")
    if not isinstance(sha256, str):
        raise SwapError(f"{directory}: meta.json records no weights sha256")
    info = ModelVersion(name=directory.name, sha256=sha256, path=str(directory.resolve()))
    weight = loaded.model.embed.weight
    if weight.dtype == torch.bfloat16 and weight.device.type == "cpu":
        float32_faster()  # timed here, while loading, rather than in the first answer's prefill
    return LoadedVersion(info=info, model=loaded.model.eval(), tokenizer=tokenizer)


def verify_version(
    version: LoadedVersion,
    *,
    serving_tokenizer: ChatTokenizer | None,
    smoke_tokens: int,
) -> None:
    """Raise SwapError unless ``version`` may replace the serving one (module docstring)."""
    name = version.info.name
    if serving_tokenizer is not None and version.tokenizer.to_str() != serving_tokenizer.to_str():
        raise SwapError(
            f"{name}: its tokenizer differs from the serving one; a new tokenizer needs a "
            "restart of the engine"
        )
    if version.model.config.vocab_size < len(version.tokenizer.control_ids):
        raise SwapError(f"{name}: the model's vocabulary has no room for the control tokens")
    tokenizer = version.tokenizer
    prompt = tokenizer.encode_chat(
        [ChatMessage("user", SMOKE_PROMPT)], add_generation_prompt=True
    ).ids
    prompt = prompt[-(version.model.config.max_seq_len - 1) :]
    params = SamplingParams(temperature=0.0, max_new_tokens=smoke_tokens)
    try:
        with torch.inference_mode():
            (result,) = generate(version.model, tokenizer, [prompt], params)
    except (RuntimeError, ValueError) as error:
        raise SwapError(f"{name}: smoke generation failed: {error}") from error
    if result.completion_tokens < 1 or not all(math.isfinite(lp) for lp in result.logprobs):
        raise SwapError(f"{name}: smoke generation produced non-finite logits")
