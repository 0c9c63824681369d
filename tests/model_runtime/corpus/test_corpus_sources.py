"""Each source's loader on small inputs written in its real format."""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from pathlib import Path

import pytest

from model_runtime.corpus import austen, brown, chatterbot, chitchat, fortunes, jargon
from model_runtime.corpus.documents import ChatTurn, SourceMissingError

BROWN_SAMPLE = (
    "\n\n\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd ``/`` no/at "
    "evidence/nn ''/'' ,/, Friday/nr ./.\n\n\n"
    "\tIt/pps was/bedz won/vbn by/in Ivan/np Allen/np Jr./np ./.\n"
    "He/pps won/vbd (/( easily/rb )/) ;/. 50/cd %/nn of/in it/ppo ?/.\n\n\n"
    "Merger/nn-hl proposed/vbn-hl\n"
    "However/wrb ,/, the/at jury/nn said/vbd it/pps believes/vbz ./.\n"
)


def test_brown_tags_are_stripped_and_sentences_rebuilt(tmp_path: Path) -> None:
    (tmp_path / "ca01").write_text(BROWN_SAMPLE, encoding="utf-8")
    (tmp_path / "README").write_text("BROWN CORPUS")
    (tmp_path / "cats.txt").write_text("ca01 news\n")
    documents = list(brown.load_brown(tmp_path))
    assert [d.id for d in documents] == ["brown/ca01"]
    assert documents[0].text.split("\n\n") == [
        'The Fulton County Grand Jury said "no evidence," Friday.',
        "It was won by Ivan Allen Jr. He won (easily); 50% of it?",
        "Merger proposed",
        "However, the jury said it believes.",
    ]


def test_brown_token_with_a_slash_in_the_word() -> None:
    assert brown.split_token("1/2/cd") == ("1/2", "cd")
    assert brown.split_token("untagged") == ("untagged", "")


def _write_fortune(directory: Path, name: str, cookies: list[str]) -> None:
    (directory / name).write_text("\n%\n".join(cookies) + "\n%\n", encoding="utf-8")
    (directory / f"{name}.dat").write_bytes(b"\x00\x00\x00\x02")


def test_fortunes_split_cookies_reflow_prose_and_skip_offensive_and_art(tmp_path: Path) -> None:
    _write_fortune(
        tmp_path,
        "people",
        [
            "A celebrity is a person who is known for his well-knownness.",
            "\tA circus foreman was making the rounds inspecting the big top\n"
            "when a scrawny little man entered the tent and walked up to him.\n"
            "\tHe asked for a job.\n"
            '\t\t-- Anonymous, "Circus Tales of\n'
            '\t\t   the Road"',
            "Roses are red,\nViolets are blue.",
        ],
    )
    (tmp_path / "people.u8").symlink_to("people")
    _write_fortune(tmp_path, "ascii-art", ["  /\\_/\\\n ( o.o )"])
    (tmp_path / "off").mkdir()
    _write_fortune(tmp_path / "off", "rude", ["Something offensive."])
    (tmp_path / "notes").write_text("no .dat index: not a fortune file")
    documents = list(fortunes.load_fortunes(tmp_path))
    assert [d.id for d in documents] == [
        "fortunes/people#0",
        "fortunes/people#1",
        "fortunes/people#2",
    ]
    assert documents[0].text == "A celebrity is a person who is known for his well-knownness."
    assert documents[1].text == (
        "A circus foreman was making the rounds inspecting the big top when a scrawny little "
        "man entered the tent and walked up to him.\n\n"
        'He asked for a job.\n-- Anonymous, "Circus Tales of the Road"'
    )
    assert documents[2].text == "Roses are red,\nViolets are blue."
    assert not any("%" in d.text or "offensive" in d.text for d in documents)


def test_fortune_laid_out_in_columns_is_kept_line_for_line() -> None:
    cookie = "\tSplit\t\t1/4 bottle\n\tMagnum\t\t2 bottles"
    assert fortunes.clean_cookie(cookie) == "Split           1/4 bottle\nMagnum          2 bottles"


JARGON = """\
                                The Jargon File

(version 4.4.7)

   Table of Contents

   Welcome

   I. Introduction

   1. Hacker Slang

   2. Jargon

   This is the Jargon File, a compendium of hacker slang.

Chapter 1. Hacker Slang

   This document is a collection of slang terms used by various subcultures
   of computer hackers, see {hacker}.

   \u250c\u2500\u2500\u252c\u2500\u2500\u2510
   \u2502a \u2502b \u2502
   \u2514\u2500\u2500\u2534\u2500\u2500\u2518

Glossary

   0

   /dev/null

   :/dev/null: /dev\u00b7nuhl/, n.

   [from the Unix null device] A notional \u2018black hole\u2019 in any information
   space being discussed. See {bit bucket}.

   :OT: //

   [Usenet] Abbreviation for \u201coff-topic\u201d.

     \u2022 First bullet that wraps
       onto a second line.
"""


def test_jargon_sections_and_entries(tmp_path: Path) -> None:
    path = tmp_path / "jargon.txt.gz"
    path.write_bytes(gzip.compress(JARGON.encode("utf-8")))
    documents = {d.id: d.text for d in jargon.load_jargon(path)}
    assert documents == {
        "jargon/section/0": "The Jargon File (version 4.4.7)\n\n"
        "This is the Jargon File, a compendium of hacker slang.",
        "jargon/section/1": "Chapter 1. Hacker Slang\n\nThis document is a collection of slang "
        "terms used by various subcultures of computer hackers, see hacker.",
        "jargon/entry//dev/null": "/dev/null: /dev\u00b7nuhl/, n.\n\n[from the Unix null device] "
        "A notional \u2018black hole\u2019 in any information space being discussed. "
        "See bit bucket.",
        "jargon/entry/OT": "OT\n\n[Usenet] Abbreviation for \u201coff-topic\u201d.\n\n"
        "- First bullet that wraps onto a second line.",
    }


def test_jargon_missing_file_names_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(SourceMissingError, match="jargon-text"):
        list(jargon.load_jargon(tmp_path / "jargon.txt.gz"))


def _utterance(text: str, sender: str) -> dict[str, str]:
    return {"text": text, "sender": sender, "timestamp": "2018-05-02T19:38:15Z"}


def test_chitchat_turns_map_to_user_and_assistant(tmp_path: Path) -> None:
    data = {
        "c1": {
            "messages": [
                [_utterance("Hello", "a"), _utterance("How are you?", "a")],
                [_utterance("fine thanks", "b")],
                [_utterance("cool", "a")],
            ],
            "prompt": "Say hi",
        },
        "c2": {"messages": [[_utterance("anyone there?", "a")]]},
    }
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    conversations = list(chitchat.load_chitchat(path))
    assert [c.id for c in conversations] == ["chitchat/c1"]
    assert conversations[0].messages == (
        ChatTurn("user", "Hello\nHow are you?"),
        ChatTurn("assistant", "fine thanks"),
    )


def test_chatterbot_yaml_exchanges(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    (tmp_path / "english").mkdir()
    (tmp_path / "spanish").mkdir()
    (tmp_path / "english" / "greetings.yml").write_text(
        "categories:\n- greetings\nconversations:\n"
        "- - Hello\n  - Hi there!\n"
        "- - How are you?\n  - I am fine.\n  - Glad to hear it.\n"
        "- - 42\n  - The answer.\n",
        encoding="utf-8",
    )
    (tmp_path / "spanish" / "saludos.yml").write_text("conversations:\n- - Hola\n  - Hola\n")
    conversations = list(chatterbot.load_chatterbot(tmp_path))
    assert [c.id for c in conversations] == [
        "chatterbot/english/greetings#0",
        "chatterbot/english/greetings#1",
        "chatterbot/english/greetings#2",
    ]
    assert [[(t.role, t.content) for t in c.messages] for c in conversations] == [
        [("user", "Hello"), ("assistant", "Hi there!")],
        [("user", "How are you?"), ("assistant", "I am fine.")],
        [("user", "42"), ("assistant", "The answer.")],
    ]


NOVEL = [
    "EMMA",
    "",
    "By Jane Austen",
    "",
    "VOLUME I",
    "",
    "CHAPTER I",
    "",
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home",
    "and happy disposition, seemed to unite _some_ of the best blessings.",
    "",
    "CHAPTER II",
    "",
    "Mr. Weston was a native of Highbury.",
]


def test_austen_reads_an_r_lazy_load_database(tmp_path: Path) -> None:
    rdata = pytest.importorskip("rdata", reason="rdata (the corpus extra) is not installed")
    np = pytest.importorskip("numpy")
    rdata.write_rds(tmp_path / "novel.rds", np.array(NOVEL), compression=None)
    serialized = (tmp_path / "novel.rds").read_bytes()
    record = struct.pack(">I", len(serialized)) + zlib.compress(serialized)
    data = tmp_path / "data"
    data.mkdir()
    (data / "Rdata.rdb").write_bytes(record)
    index = {
        "variables": {"emma": np.array([0, len(record)], dtype=np.int32)},
        "references": {},
        "compressed": np.array([True]),
    }
    rdata.write_rds(data / "Rdata.rdx", index)
    documents = list(austen.load_austen(data))
    assert [d.id for d in documents] == ["austen/emma/0", "austen/emma/1"]
    assert documents[0].text == (
        "Emma\n\nCHAPTER I\n\nEmma Woodhouse, handsome, clever, and rich, with a comfortable "
        "home and happy disposition, seemed to unite some of the best blessings."
    )
    assert documents[1].text == "Emma\n\nCHAPTER II\n\nMr. Weston was a native of Highbury."


def test_austen_reads_rda_files(tmp_path: Path) -> None:
    rdata = pytest.importorskip("rdata", reason="rdata (the corpus extra) is not installed")
    np = pytest.importorskip("numpy")
    rdata.write_rda(
        tmp_path / "novels.rda", {"persuasion": np.array(NOVEL[6:]), "year": np.array([1817.0])}
    )
    documents = list(austen.load_austen(tmp_path / "novels.rda"))
    assert [d.id for d in documents] == ["austen/persuasion/0", "austen/persuasion/1"]
    assert documents[0].text.startswith("Persuasion\n\nCHAPTER I\n\nEmma Woodhouse")


@pytest.mark.skipif(
    not (austen.DEFAULT_DIR / "Rdata.rdx").exists(),
    reason="Debian r-cran-janeaustenr is not installed (scripts/install-corpus-sources.sh)",
)
def test_austen_installed_package_holds_six_novels() -> None:
    pytest.importorskip("rdata", reason="rdata (the corpus extra) is not installed")
    novels = austen.read_novels()
    assert sorted(novels) == sorted(austen.TITLES)
    assert len(austen.chapters([str(line) for line in novels["prideprejudice"]])) == 61
