"""``python -m model_runtime``: tokenizer training, random checkpoints, generation, chat.

Every subcommand is a *registrar*: a function that adds its subparser and sets ``func``
(Namespace -> exit code) with ``set_defaults``. :data:`COMMANDS` lists them in the order
``--help`` shows; a new subcommand (train, serve, ...) is one more registrar in that list.
Handlers import torch and the model code lazily, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import torch

    from model_runtime.palm import PaLM
    from model_runtime.sampling import SamplingParams
    from model_runtime.tokenizer import ChatMessage, ChatTokenizer

Handler = Callable[[argparse.Namespace], int]
Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

DTYPES = ("float32", "bfloat16")  # no float16: it has no fast kernels on CPU


class CommandError(Exception):
    """A problem the user can fix (bad path, bad value): printed without a traceback."""


# --- tokenizer ------------------------------------------------------------------------------


def add_tokenizer_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("tokenizer", help="train a byte-level BPE chat tokenizer")
    actions = parser.add_subparsers(dest="tokenizer_action", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="train on text files and save tokenizer.json")
    train.add_argument("--input", nargs="+", type=Path, required=True, metavar="FILE")
    train.add_argument("--vocab-size", type=int, required=True, metavar="N")
    train.add_argument("--min-frequency", type=int, default=2, metavar="N")
    train.add_argument("--out", type=Path, required=True, metavar="DIR")
    train.set_defaults(func=run_tokenizer_train)


def run_tokenizer_train(args: argparse.Namespace) -> int:
    from model_runtime.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(args.input, args.vocab_size, min_frequency=args.min_frequency)
    path = tokenizer.save(args.out)
    print(f"wrote {path} (vocab size {tokenizer.vocab_size})")
    return 0


# --- init -----------------------------------------------------------------------------------


def add_init_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("init", help="write a randomly initialised checkpoint")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument(
        "--vocab-from",
        type=Path,
        required=True,
        metavar="TOKENIZER",
        help="tokenizer directory or tokenizer.json; sets the vocabulary size",
    )
    parser.add_argument("--dim", type=int, required=True)
    parser.add_argument("--depth", type=int, required=True)
    parser.add_argument("--heads", type=int, required=True)
    parser.add_argument("--dim-head", type=int, default=64)
    parser.add_argument("--ff-mult", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--qk-norm", action="store_true")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    parser.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    import torch

    from model_runtime.checkpoints import save_checkpoint
    from model_runtime.config import PaLMConfig
    from model_runtime.palm import PaLM
    from model_runtime.tokenizer import ChatTokenizer

    tokenizer = ChatTokenizer.from_file(args.vocab_from)
    config = PaLMConfig(
        vocab_size=tokenizer.vocab_size,
        dim=args.dim,
        depth=args.depth,
        heads=args.heads,
        dim_head=args.dim_head,
        ff_mult=args.ff_mult,
        max_seq_len=args.max_seq_len,
        qk_norm=args.qk_norm,
    )
    torch.manual_seed(args.seed)
    model = PaLM(config)
    digest = save_checkpoint(model, args.out, tokenizer_json=tokenizer.to_str())
    print(f"wrote {args.out} ({model.num_parameters():,} parameters, sha256 {digest})")
    return 0


# --- generate and chat ----------------------------------------------------------------------


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, metavar="DIR", help="checkpoint")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="weights dtype; bfloat16 is several times faster on CPUs with AMX",
    )
    parser.add_argument(
        "--threads", type=int, default=None, metavar="N", help="CPU threads (default: torch's)"
    )
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256, metavar="N")
    parser.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--frequency-penalty", type=float, default=0.0)
    parser.add_argument("--presence-penalty", type=float, default=0.0)
    parser.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)"
    )
    parser.add_argument("--seed", type=int, default=None)


def add_generate_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "generate", help="answer one prompt (as a chat user turn), streaming to stdout"
    )
    _add_model_arguments(parser)
    parser.add_argument("--prompt", required=True)
    parser.add_argument(
        "--stats", action="store_true", help="print finish reason, token counts, speed to stderr"
    )
    parser.set_defaults(func=run_generate)


def add_chat_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "chat", help="interactive chat (/reset clears the history, /quit or EOF exits)"
    )
    _add_model_arguments(parser)
    parser.set_defaults(func=run_chat)


def _sampling_params(args: argparse.Namespace, seed: int | None) -> SamplingParams:
    from model_runtime.sampling import SamplingParams

    return SamplingParams(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty,
        max_new_tokens=args.max_new_tokens,
        stop_strings=tuple(args.stop),
        seed=seed,
    )


def _load(args: argparse.Namespace) -> tuple[PaLM, ChatTokenizer, torch.device]:
    import torch

    from model_runtime.checkpoints import load_checkpoint
    from model_runtime.tokenizer import ChatTokenizer

    if args.threads is not None:
        if args.threads < 1:
            raise CommandError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    loaded = load_checkpoint(args.model, device=device, dtype=dtype)
    if loaded.tokenizer_json is None:
        raise CommandError(f"{args.model} holds no tokenizer.json")
    model = loaded.model.eval()
    return model, ChatTokenizer.from_str(loaded.tokenizer_json), device


@dataclass
class ChatSession:
    """A conversation with the model: history, context trimming, streamed replies.

    Before each reply the oldest turns are dropped (the system prompt stays) until the prompt
    leaves ``reserve`` tokens of the context for the answer.
    """

    model: PaLM
    tokenizer: ChatTokenizer
    params: SamplingParams
    device: torch.device
    system: str | None = None
    history: list[ChatMessage] = field(default_factory=list)
    turns: int = 0

    @property
    def reserve(self) -> int:
        return min(self.params.max_new_tokens, self.model.config.max_seq_len // 2)

    def reset(self) -> None:
        self.history.clear()

    def prompt_ids(self, user_text: str) -> list[int]:
        """Chat prompt for the history plus ``user_text``, trimmed to leave room to answer."""
        from model_runtime.tokenizer import ChatMessage

        head = [ChatMessage("system", self.system)] if self.system else []
        turns = [*self.history, ChatMessage("user", user_text)]
        budget = self.model.config.max_seq_len - self.reserve
        while True:
            ids = self.tokenizer.encode_chat([*head, *turns], add_generation_prompt=True).ids
            if len(ids) <= budget or len(turns) == 1:
                break
            turns = turns[2:] if turns[0].role == "user" and len(turns) > 2 else turns[1:]
        if len(ids) >= self.model.config.max_seq_len:
            raise CommandError(
                f"message too long: {len(ids)} tokens, the model's context is "
                f"{self.model.config.max_seq_len}"
            )
        return ids

    def reply(self, user_text: str) -> Iterator[str]:
        """Stream the answer to ``user_text``; the turn joins the history once it finishes."""
        from model_runtime.generation import completion_seed, stream_generate
        from model_runtime.tokenizer import ChatMessage

        ids = self.prompt_ids(user_text)
        seed = self.params.seed
        params = self.params
        if seed is not None:
            params = replace(params, seed=completion_seed(seed, self.turns))
        stream = stream_generate(self.model, self.tokenizer, ids, params, device=self.device)
        yield from stream
        self.history += [
            ChatMessage("user", user_text),
            ChatMessage("assistant", stream.result.text),
        ]
        self.turns += 1


def run_generate(args: argparse.Namespace) -> int:
    import time

    from model_runtime.generation import stream_generate
    from model_runtime.tokenizer import ChatMessage

    model, tokenizer, device = _load(args)
    params = _sampling_params(args, args.seed)
    messages = [ChatMessage("system", args.system)] if args.system else []
    messages.append(ChatMessage("user", args.prompt))
    ids = tokenizer.encode_chat(messages, add_generation_prompt=True).ids
    if len(ids) >= model.config.max_seq_len:
        raise CommandError(
            f"prompt too long: {len(ids)} tokens, the model's context is {model.config.max_seq_len}"
        )
    started = time.perf_counter()
    stream = stream_generate(model, tokenizer, ids, params, device=device)
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats:
        result = stream.result
        seconds = time.perf_counter() - started
        print(
            f"[{result.finish_reason}; prompt {result.prompt_tokens} tokens, completion "
            f"{result.completion_tokens} tokens, {result.completion_tokens / seconds:.1f} tok/s]",
            file=sys.stderr,
        )
    return 0


def run_chat(args: argparse.Namespace) -> int:
    model, tokenizer, device = _load(args)
    session = ChatSession(
        model=model,
        tokenizer=tokenizer,
        params=_sampling_params(args, args.seed),
        device=device,
        system=args.system,
    )
    return chat_loop(session, sys.stdin, sys.stdout, interactive=sys.stdin.isatty())


def chat_loop(session: ChatSession, stdin: TextIO, stdout: TextIO, *, interactive: bool) -> int:
    """Read user lines until /quit or EOF; stream each answer. Prompts show when interactive."""
    if interactive:
        stdout.write("palmloop chat: /reset clears the history, /quit exits\n")
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            line = ""
        if not line:  # EOF
            if interactive:
                stdout.write("\n")
            return 0
        text = line.rstrip("\n")
        command = text.strip()
        if not command:
            continue
        if command == "/quit":
            return 0
        if command == "/reset":
            session.reset()
            stdout.write("(history cleared)\n")
            continue
        if interactive:
            stdout.write("assistant> ")
        try:
            for piece in session.reply(text):
                stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:
            stdout.write(" [interrupted]")
        except CommandError as error:
            print(f"error: {error}", file=sys.stderr)
        stdout.write("\n")
        stdout.flush()


# --- entry point ----------------------------------------------------------------------------


def add_corpus_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``corpus build``: defined in :mod:`model_runtime.corpus.cli`."""
    from model_runtime.corpus.cli import add_corpus_parser

    add_corpus_parser(subparsers)


def add_train_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from model_runtime.training.cli import add_train_parser

    add_train_parser(subparsers)


def add_serve_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from model_runtime.server.cli import add_serve_parser

    add_serve_parser(subparsers)


def add_export_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "export", help="write a trained checkpoint as a servable model directory (bf16)"
    )
    parser.add_argument("--model", type=Path, required=True, metavar="DIR", help="checkpoint")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument(
        "--metrics",
        type=Path,
        default=None,
        metavar="JSON",
        help="a JSON object of figures to record in meta.json (e.g. held-out perplexity)",
    )
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    import json

    from model_runtime.export import export_checkpoint

    metrics = None
    if args.metrics is not None:
        metrics = json.loads(args.metrics.read_text(encoding="utf-8"))
        if not isinstance(metrics, dict):
            raise CommandError(f"{args.metrics}: expected a JSON object")
    sha = export_checkpoint(args.model, args.out, dtype=args.dtype, metrics=metrics)
    print(f"wrote {args.out} ({args.dtype}, sha256 {sha})")
    return 0


def add_samples_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "samples", help="answer each line of a prompts file; print the answers as Markdown"
    )
    parser.add_argument("--model", type=Path, required=True, metavar="DIR", help="checkpoint")
    parser.add_argument("--prompts", type=Path, required=True, metavar="FILE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=128, metavar="N")
    parser.add_argument("--system", default=None, help="system prompt")
    parser.set_defaults(func=run_samples)


def run_samples(args: argparse.Namespace) -> int:
    from model_runtime.checkpoints import load_checkpoint
    from model_runtime.samples import sample_answers, to_markdown
    from model_runtime.tokenizer import ChatTokenizer

    prompts = [line.strip() for line in args.prompts.read_text("utf-8").splitlines()]
    prompts = [line for line in prompts if line and not line.startswith("#")]
    loaded = load_checkpoint(args.model)
    if loaded.tokenizer_json is None:
        raise CommandError(f"{args.model} holds no tokenizer.json")
    samples = sample_answers(
        loaded.model,
        ChatTokenizer.from_str(loaded.tokenizer_json),
        prompts,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        system=args.system,
    )
    print(to_markdown(samples), end="")
    return 0


def add_topicality_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = subparsers.add_parser(
        "topicality",
        help="answer held-out questions as the chat app does; count the answers on their topic",
    )
    parser.add_argument("--model", type=Path, required=True, metavar="DIR", help="checkpoint")
    parser.add_argument(
        "--topics", type=Path, required=True, metavar="FILE", help="question<TAB>word|word lines"
    )
    parser.add_argument("--seeds", type=int, default=3, metavar="N", help="answers per question")
    parser.add_argument("--max-new-tokens", type=int, default=64, metavar="N")
    parser.set_defaults(func=run_topicality)


def run_topicality(args: argparse.Namespace) -> int:
    """One line per answer (+ on topic, - not), then one JSON line of the figures."""
    import json

    from model_runtime.checkpoints import load_checkpoint
    from model_runtime.tokenizer import ChatTokenizer
    from model_runtime.topicality import answer_topics, read_topics

    if args.seeds < 1:
        raise CommandError(f"--seeds must be >= 1, got {args.seeds}")
    try:
        questions = read_topics(args.topics)
    except (OSError, ValueError) as error:
        raise CommandError(str(error)) from error
    if not questions:
        raise CommandError(f"{args.topics} holds no questions")
    loaded = load_checkpoint(args.model)
    if loaded.tokenizer_json is None:
        raise CommandError(f"{args.model} holds no tokenizer.json")
    answers = answer_topics(
        loaded.model.float(),
        ChatTokenizer.from_str(loaded.tokenizer_json),
        questions,
        seeds=range(args.seeds),
        max_new_tokens=args.max_new_tokens,
    )
    for answer in answers:
        mark = "+" if answer.on_topic else "-"
        print(f"{mark} [seed {answer.seed}] {answer.question} -> {answer.answer!r}")
    on_topic = sum(answer.on_topic for answer in answers)
    figures = {
        "questions": len(questions),
        "answers": len(answers),
        "on_topic": on_topic,
        "rate": round(on_topic / len(answers), 3),
    }
    print(json.dumps(figures))
    return 0


def add_build_kernels_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = subparsers.add_parser(
        "build-kernels",
        help="compile palmloop's CPU kernels now (else the first generation does it, ~40 s)",
    )
    parser.set_defaults(func=run_build_kernels)


def run_build_kernels(args: argparse.Namespace) -> int:
    """Exit 0 whether or not the kernels can run here: where they cannot, torch's operations
    (oneDNN's products) run instead."""
    from model_runtime import cpu_kernels

    if cpu_kernels.load() is not None:
        print("palmloop CPU kernels: ready")
    else:
        print(f"palmloop CPU kernels: not in use, {cpu_kernels.why_unavailable()}")
    return 0


COMMANDS: list[Registrar] = [
    add_tokenizer_command,
    add_corpus_command,
    add_init_command,
    add_train_command,
    add_export_command,
    add_generate_command,
    add_chat_command,
    add_samples_command,
    add_topicality_command,
    add_serve_command,
    add_build_kernels_command,
]


def build_parser(commands: Sequence[Registrar] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_runtime", description="palmloop's model runtime"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS if commands is None else commands:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit code.
    User errors (bad files, bad values, a bad checkpoint) print one line and return 1."""
    args = build_parser().parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except Exception as error:
        if not isinstance(error, _user_errors()):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1


def _user_errors() -> tuple[type[Exception], ...]:
    errors: tuple[type[Exception], ...] = (CommandError, ValueError, OSError)
    try:
        from model_runtime.checkpoints import CheckpointError
    except ImportError:
        return errors
    return (*errors, CheckpointError)
