"""``python -m model_runtime``: real subprocesses on a tiny checkpoint, plus the chat loop
in-process (history, /reset, trimming)."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_runtime.checkpoints import load_checkpoint
from model_runtime.cli import ChatSession, build_parser, chat_loop, main
from model_runtime.generation import generate
from model_runtime.sampling import SamplingParams
from model_runtime.tokenizer import ChatMessage, ChatTokenizer

REPO = Path(__file__).resolve().parents[2]
CORPUS = "Hello there! How are you today? I am well, thanks for asking. Café, naïve.\n" * 30
SAMPLING = ["--temperature", "0.8", "--top-p", "0.9", "--max-new-tokens", "12", "--seed", "5"]


def run_cli(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "model_runtime", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def tokenizer_dir(workdir: Path) -> Path:
    corpus = workdir / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    out = workdir / "tok"
    done = run_cli(
        "tokenizer", "train", "--input", str(corpus), "--vocab-size", "300", "--out", str(out),
        cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "tokenizer.json" in done.stdout
    return out


@pytest.fixture(scope="module")
def checkpoint_dir(workdir: Path, tokenizer_dir: Path) -> Path:
    out = workdir / "ckpt"
    done = run_cli(
        "init", "--out", str(out), "--vocab-from", str(tokenizer_dir),
        "--dim", "32", "--depth", "2", "--heads", "4", "--dim-head", "8", "--max-seq-len", "96",
        cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "parameters" in done.stdout
    return out


@pytest.fixture(scope="module")
def session_parts(checkpoint_dir: Path) -> tuple[torch.nn.Module, ChatTokenizer]:
    loaded = load_checkpoint(checkpoint_dir)
    assert loaded.tokenizer_json is not None
    return loaded.model.eval(), ChatTokenizer.from_str(loaded.tokenizer_json)


def expected_reply(checkpoint_dir: Path, messages: list[ChatMessage], seed: int) -> str:
    loaded = load_checkpoint(checkpoint_dir)
    assert loaded.tokenizer_json is not None
    tokenizer = ChatTokenizer.from_str(loaded.tokenizer_json)
    ids = tokenizer.encode_chat(messages, add_generation_prompt=True).ids
    params = SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=12, seed=seed)
    (result,) = generate(loaded.model.eval(), tokenizer, [ids], params)
    return result.text


def test_help_lists_the_subcommands(workdir: Path) -> None:
    done = run_cli("--help", cwd=workdir)
    assert done.returncode == 0
    for command in ("tokenizer", "corpus", "init", "generate", "chat"):
        assert command in done.stdout


def test_unknown_subcommand_is_a_usage_error(workdir: Path) -> None:
    done = run_cli("frobnicate", cwd=workdir)
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


def test_tokenizer_train_writes_a_loadable_tokenizer(tokenizer_dir: Path) -> None:
    tokenizer = ChatTokenizer.from_file(tokenizer_dir / "tokenizer.json")
    assert 262 < tokenizer.vocab_size <= 300
    assert tokenizer.decode(tokenizer.encode_text("Café, naïve")) == "Café, naïve"


def test_init_writes_a_checkpoint_with_the_requested_sizes(
    checkpoint_dir: Path, tokenizer_dir: Path
) -> None:
    loaded = load_checkpoint(checkpoint_dir)
    config = loaded.config
    assert (config.dim, config.depth, config.heads, config.dim_head) == (32, 2, 4, 8)
    assert config.max_seq_len == 96
    assert config.vocab_size == ChatTokenizer.from_file(tokenizer_dir).vocab_size
    assert loaded.tokenizer_json == ChatTokenizer.from_file(tokenizer_dir).to_str()


def test_generate_streams_the_seeded_completion(workdir: Path, checkpoint_dir: Path) -> None:
    """Same seed, same text: in another process, and streamed, as generate() in this one."""
    args = ["generate", "--model", str(checkpoint_dir), "--prompt", "Hello there!", *SAMPLING]
    first = run_cli(*args, "--stats", cwd=workdir)
    assert first.returncode == 0, first.stderr
    expected = expected_reply(checkpoint_dir, [ChatMessage("user", "Hello there!")], seed=5)
    assert first.stdout == expected + "\n"
    assert "tok/s" in first.stderr and "completion" in first.stderr


def test_generate_in_bf16(workdir: Path, checkpoint_dir: Path) -> None:
    args = ["generate", "--model", str(checkpoint_dir), "--prompt", "Hi", "--dtype", "bfloat16"]
    args += ["--threads", "1"]
    done = run_cli(*args, "--max-new-tokens", "4", "--stats", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert "completion" in done.stderr


def test_a_missing_checkpoint_is_a_one_line_error(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "--model", str(workdir / "nope"), "--prompt", "x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


def test_bad_sampling_values_are_one_line_errors(
    checkpoint_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["generate", "--model", str(checkpoint_dir), "--prompt", "x", "--top-p", "0"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: top_p must be in (0, 1]") and err.count("\n") == 1


def test_chat_with_piped_stdin_answers_and_quits(workdir: Path, checkpoint_dir: Path) -> None:
    args = ["chat", "--model", str(checkpoint_dir), "--system", "Be brief.", *SAMPLING]
    done = run_cli(*args, cwd=workdir, stdin="hi\n/quit\nnever read\n")
    assert done.returncode == 0, done.stderr
    messages = [ChatMessage("system", "Be brief."), ChatMessage("user", "hi")]
    assert done.stdout == expected_reply(checkpoint_dir, messages, seed=5) + "\n"


def make_session(
    parts: tuple[torch.nn.Module, ChatTokenizer], *, max_new_tokens: int = 6
) -> ChatSession:
    model, tokenizer = parts
    params = SamplingParams(temperature=0, max_new_tokens=max_new_tokens)
    return ChatSession(
        model=model,  # type: ignore[arg-type]
        tokenizer=tokenizer,
        params=params,
        device=torch.device("cpu"),
        system="sys",
    )


def test_chat_loop_keeps_history_resets_and_ends_at_eof(
    session_parts: tuple[torch.nn.Module, ChatTokenizer],
) -> None:
    session = make_session(session_parts)
    out = io.StringIO()
    code = chat_loop(session, io.StringIO("one\n\ntwo\n"), out, interactive=False)
    assert code == 0  # EOF ends the loop
    assert [m.role for m in session.history] == ["user", "assistant"] * 2
    assert [m.content for m in session.history[::2]] == ["one", "two"]
    assert out.getvalue().count("\n") == 2  # one line per answer, the blank line skipped
    # the next prompt carries both turns (decode drops the control tokens)
    replies = [m.content for m in session.history[1::2]]
    prompt = session.prompt_ids("three")
    assert session.tokenizer.decode(prompt) == f"sysone{replies[0]}two{replies[1]}three"

    chat_loop(session, io.StringIO("/reset\nfour\n/quit\n"), out, interactive=False)
    assert [m.content for m in session.history[::2]] == ["four"]
    assert "(history cleared)" in out.getvalue()


def test_chat_drops_the_oldest_turns_to_leave_room_for_the_answer(
    session_parts: tuple[torch.nn.Module, ChatTokenizer],
) -> None:
    session = make_session(session_parts, max_new_tokens=40)
    long_turn = "Hello there! How are you today?"
    for index in range(6):
        session.history.append(ChatMessage("user", f"{index} {long_turn}"))
        session.history.append(ChatMessage("assistant", "ok"))
    ids = session.prompt_ids("last")
    max_len = session.model.config.max_seq_len
    assert len(ids) <= max_len - session.reserve
    text = session.tokenizer.decode(ids)
    assert text.startswith("sys") and text.endswith("last")
    assert "5 Hello" in text and "0 Hello" not in text
    assert ids[0] == session.tokenizer.system_id and ids[-1] == session.tokenizer.assistant_id


def test_parser_accepts_extra_registrars() -> None:
    def add_hello(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        parser = subparsers.add_parser("hello")
        parser.set_defaults(func=lambda args: 7)

    args = build_parser([add_hello]).parse_args(["hello"])
    assert args.func(args) == 7
