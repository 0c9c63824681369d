"""``samples``: answers of a model to a list of prompts, as Markdown, exactly as generated.

Used for the model card (``docs/base-model.md``): each prompt is one user turn, answered with
the chat app's default sampling (temperature 0.7, top-p 0.95, frequency penalty 0.3) and a
fixed seed, so the same model gives the same page. Nothing is edited: the text is shown as
decoded, with the finish reason (``stop`` means the model ended its turn with ``<|end|>``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model_runtime.generation import generate
from model_runtime.palm import PaLM
from model_runtime.sampling import chat_sampling
from model_runtime.tokenizer import ChatMessage, ChatTokenizer


@dataclass(frozen=True)
class Sample:
    prompt: str
    answer: str
    finish_reason: str
    tokens: int


def sample_answers(
    model: PaLM,
    tokenizer: ChatTokenizer,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    max_new_tokens: int = 128,
    system: str | None = None,
) -> list[Sample]:
    """One answer per prompt (prompt i uses seed ``seed + i``)."""
    head = [ChatMessage("system", system)] if system else []
    samples = []
    for index, prompt in enumerate(prompts):
        ids = tokenizer.encode_chat(
            [*head, ChatMessage("user", prompt)], add_generation_prompt=True
        ).ids
        params = chat_sampling(max_new_tokens=max_new_tokens, seed=seed + index)
        with torch.inference_mode():
            [result] = generate(model, tokenizer, [ids], params)
        samples.append(Sample(prompt, result.text, result.finish_reason, result.completion_tokens))
    return samples


def to_markdown(samples: Sequence[Sample]) -> str:
    """Each sample as a quoted prompt and answer with its finish reason and length."""
    blocks = []
    for sample in samples:
        answer = "\n".join(f"> {line}" if line else ">" for line in sample.answer.split("\n"))
        blocks.append(
            f"**User:** {sample.prompt}\n\n{answer}\n\n"
            f"*finish: {sample.finish_reason}, {sample.tokens} tokens*\n"
        )
    return "\n".join(blocks)
