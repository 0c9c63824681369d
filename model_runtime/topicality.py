"""How often a model's answers stay on the topic of the question: a figure for the model card.

A topics file holds one question per line, a tab, and the words that show an answer is about
it, separated by ``|`` (``#`` starts a comment line). An answer is on topic when it contains one
of them as a whole word, case-insensitively, also with an ``s`` or ``es`` ending: "bee" matches
"Bees" but not "beef", "sand" not "sandwich". Each question is answered as the chat app
answers (temperature 0.7, top-p 0.95, frequency penalty 0.3) once per seed, so a model gives
the same figure on every run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model_runtime.generation import generate
from model_runtime.palm import PaLM
from model_runtime.sampling import chat_sampling
from model_runtime.tokenizer import ChatMessage, ChatTokenizer


@dataclass(frozen=True)
class TopicQuestion:
    question: str
    keywords: tuple[str, ...]

    def matches(self, answer: str) -> bool:
        return any(
            re.search(rf"(?<!\w){re.escape(word)}(?:e?s)?(?!\w)", answer, re.IGNORECASE)
            for word in self.keywords
        )


@dataclass(frozen=True)
class TopicAnswer:
    question: str
    seed: int
    answer: str
    on_topic: bool


def read_topics(path: Path) -> list[TopicQuestion]:
    """The questions of a topics file; a line without a tab or keywords is a ValueError."""
    questions = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        question, tab, words = line.partition("\t")
        keywords = tuple(word.strip() for word in words.split("|") if word.strip())
        if not tab or not question.strip() or not keywords:
            raise ValueError(f"{path}:{number}: expected 'question<TAB>word|word'")
        questions.append(TopicQuestion(question.strip(), keywords))
    return questions


def answer_topics(
    model: PaLM,
    tokenizer: ChatTokenizer,
    questions: Sequence[TopicQuestion],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    max_new_tokens: int = 64,
) -> list[TopicAnswer]:
    """Every question answered once per seed (one batch per seed), and whether each answer is
    on topic."""
    prompts = [
        tokenizer.encode_chat([ChatMessage("user", q.question)], add_generation_prompt=True).ids
        for q in questions
    ]
    answers = []
    for seed in seeds:
        params = chat_sampling(max_new_tokens=max_new_tokens, seed=seed)
        with torch.inference_mode():
            results = generate(model, tokenizer, prompts, params)
        answers += [
            TopicAnswer(q.question, seed, result.text, q.matches(result.text))
            for q, result in zip(questions, results, strict=True)
        ]
    return answers
