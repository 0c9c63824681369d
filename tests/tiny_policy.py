"""A tiny but real policy checkpoint (trained tokenizer, random PaLM) for the web-side tests."""

from __future__ import annotations

from pathlib import Path

import torch

from model_runtime.checkpoints import save_checkpoint
from model_runtime.config import PaLMConfig
from model_runtime.palm import PaLM
from model_runtime.tokenizer import train_tokenizer

TEXT = (
    """The river runs past the old mill and into the valley below.
People walk along the bank in the morning, and children play near the water.
In the evening the light turns gold and the birds return to the trees.
A good answer is short, clear and kind; it says what it knows and no more.
"""
    * 20
)


def _learn_plain_text(model: PaLM, ids: list[int], steps: int = 40) -> None:
    """A few steps on plain text: the model then writes words and rarely ends a turn early."""
    data = torch.tensor(ids[: (len(ids) // 65) * 65]).view(-1, 65)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = data[(step * 8) % len(data) :][:8]
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def build_tiny_policy(
    directory: Path, *, seed: int = 0, max_seq_len: int = 512, dim: int = 32, depth: int = 2
) -> Path:
    """Write a checkpoint directory (model.safetensors, config, tokenizer, meta) and return it."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    corpus = directory.parent / f"{directory.name}-corpus.txt"
    corpus.write_text(TEXT)
    tokenizer = train_tokenizer([corpus], 400)
    torch.manual_seed(seed)
    config = PaLMConfig(
        vocab_size=tokenizer.vocab_size,
        dim=dim,
        depth=depth,
        heads=4,
        dim_head=dim // 4,
        max_seq_len=max_seq_len,
        xpos_scale_base=max_seq_len,
    )
    model = PaLM(config)
    _learn_plain_text(model, tokenizer.encode_text(TEXT))
    model.eval()
    save_checkpoint(model, directory, tokenizer_json=tokenizer.to_str())
    return directory
