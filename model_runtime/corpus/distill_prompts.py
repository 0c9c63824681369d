"""The questions the distillation teacher answers: everyday requests an assistant gets.

Two kinds, mixed in a fixed, seeded order:

* the questions of the chatterbot corpus (the ``chatterbot`` source of a built corpus), which
  cover greetings, science, history, food, money, sports and the like in plain words;
* questions written from templates over a list of everyday topics ("How do I look after
  a houseplant?", "Give me one tip for saving money."), so the set is not only trivia.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TOPIC_TEMPLATES = (
    "What is {topic}?",
    "Can you explain {topic} in simple words?",
    "Why is {topic} important?",
    "Tell me something interesting about {topic}.",
    "Give me one tip about {topic}.",
    "What should a beginner know about {topic}?",
    "How would you describe {topic} to a child?",
    "What is a common mistake people make with {topic}?",
)

TOPICS = (
    "sleep",
    "coffee",
    "tea",
    "bread",
    "rain",
    "the moon",
    "the sun",
    "the ocean",
    "rivers",
    "mountains",
    "volcanoes",
    "earthquakes",
    "clouds",
    "snow",
    "wind",
    "trees",
    "flowers",
    "bees",
    "dogs",
    "cats",
    "horses",
    "birds",
    "fish",
    "gardening",
    "cooking",
    "baking",
    "running",
    "swimming",
    "cycling",
    "walking",
    "yoga",
    "football",
    "chess",
    "music",
    "the piano",
    "the guitar",
    "painting",
    "photography",
    "reading",
    "poetry",
    "novels",
    "history",
    "ancient Rome",
    "ancient Egypt",
    "the printing press",
    "electricity",
    "magnets",
    "gravity",
    "light",
    "sound",
    "the weather",
    "the seasons",
    "recycling",
    "saving money",
    "a budget",
    "a bank account",
    "interest rates",
    "taxes",
    "shopping",
    "friendship",
    "kindness",
    "patience",
    "stress",
    "exercise",
    "vitamins",
    "water",
    "breakfast",
    "vegetables",
    "fruit",
    "salt",
    "sugar",
    "computers",
    "the internet",
    "email",
    "passwords",
    "programming",
    "Python",
    "a spreadsheet",
    "a calendar",
    "time management",
    "learning a language",
    "writing an essay",
    "public speaking",
    "a job interview",
    "a resume",
    "teamwork",
    "moving house",
    "travel",
    "maps",
    "trains",
    "airplanes",
    "cars",
    "bicycles",
    "the library",
    "museums",
    "birthdays",
    "holidays",
    "a picnic",
    "camping",
    "the stars",
    "planets",
    "the human heart",
    "the brain",
    "memory",
    "dreams",
    "laughter",
    "honesty",
    "good manners",
)

STANDALONE = (
    "Hello! How are you today?",
    "Good morning!",
    "Can you help me?",
    "What can you do?",
    "Thank you for your help.",
    "I feel tired today. Any advice?",
    "I am bored. What could I do?",
    "Suggest a quick dinner idea.",
    "Suggest a name for a pet goldfish.",
    "What is a good way to start the day?",
    "How do I boil an egg?",
    "How do I make a cup of tea?",
    "How can I fall asleep faster?",
    "How do I keep a houseplant alive?",
    "How can I remember things better?",
    "How do I write a polite email?",
    "How do I say no politely?",
    "How can I be more productive?",
    "How do I make new friends?",
    "How do I stay calm before an exam?",
    "How do I clean a cast iron pan?",
    "How can I save water at home?",
    "How do I start running?",
    "How long should I sleep each night?",
    "Why is the sky blue?",
    "Why do leaves change color in autumn?",
    "Why do we have seasons?",
    "Why does ice float?",
    "What makes a rainbow?",
    "How far away is the moon?",
    "How many days are in a leap year?",
    "What is the capital of France?",
    "What is the largest ocean?",
    "Who wrote Pride and Prejudice?",
    "What is a haiku?",
    "Write a short poem about the sea.",
    "Tell me a joke.",
    "Tell me a fun fact.",
    "Give me a word that means happy.",
    "What is the opposite of cold?",
    "What is two plus two?",
    "What is the difference between weather and climate?",
    "What is the difference between a list and a tuple in Python?",
    "What does a for loop do?",
    "What is a variable in programming?",
    "Recommend a good habit to build.",
    "What should I pack for a weekend trip?",
    "Describe a perfect Sunday.",
    "What do you like to talk about?",
    "Can you give me some encouragement?",
)


@dataclass(frozen=True)
class DistillPrompt:
    """One question for the teacher; ``id`` is stable across runs (the hash of its text)."""

    id: str
    origin: str  # "chatterbot", "template" or "standalone"
    text: str


def prompt_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def chatterbot_questions(chat_jsonl: Path) -> list[str]:
    """The first user turn of every chatterbot conversation in a built corpus's chat file."""
    questions: list[str] = []
    with chat_jsonl.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("source") != "chatterbot":
                continue
            first = record["messages"][0]
            if first["role"] == "user" and 3 <= len(first["content"]) <= 200:
                questions.append(first["content"].strip())
    return questions


def template_questions() -> list[str]:
    return [template.format(topic=topic) for topic in TOPICS for template in TOPIC_TEMPLATES]


def build_prompts(chat_jsonl: Path | None, *, limit: int, seed: int = 0) -> list[DistillPrompt]:
    """Up to ``limit`` distinct prompts: every standalone one, then chatterbot questions and
    template questions interleaved in a seeded shuffle."""
    rng = random.Random(seed)
    pool: list[tuple[str, str]] = []
    if chat_jsonl is not None and chat_jsonl.exists():
        pool += [("chatterbot", text) for text in chatterbot_questions(chat_jsonl)]
    pool += [("template", text) for text in template_questions()]
    rng.shuffle(pool)
    ordered = [("standalone", text) for text in STANDALONE] + pool
    seen: set[str] = set()
    prompts: list[DistillPrompt] = []
    for origin, text in ordered:
        key = text.casefold()
        if key in seen:
            continue
        seen.add(key)
        prompts.append(DistillPrompt(id=prompt_id(text), origin=origin, text=text))
        if len(prompts) >= limit:
            break
    return prompts


def iter_batches(prompts: list[DistillPrompt], size: int) -> Iterator[list[DistillPrompt]]:
    """Batches of prompts of similar length (less padding), in a deterministic order."""
    ordered = sorted(prompts, key=lambda prompt: (len(prompt.text), prompt.id))
    for start in range(0, len(ordered), size):
        yield ordered[start : start + size]
