"""reST inline markup to plain text: roles, literals, emphasis, links, footnote references,
substitutions and escapes (used by :mod:`model_runtime.corpus.rst`)."""

from __future__ import annotations

import re

_LITERAL = re.compile(r"``(.+?)``(?!`)", re.S)
_ROLE = re.compile(r":((?:[\w-]+:)*[\w-]+):`((?:[^`\\]|\\.)+?)`")
_LINK = re.compile(r"`((?:[^`\\]|\\.)+?)`__?(?!\w)")
_INTERPRETED = re.compile(r"`((?:[^`\\]|\\.)+?)`")
_STRONG = re.compile(r"(?<![\w*])\*\*(?=\S)(.+?)(?<=\S)\*\*(?![\w*])", re.S)
_EMPHASIS = re.compile(r"(?<![\w*\\])\*(?=[^\s*])(.+?)(?<=[^\s*\\])\*(?![\w*])", re.S)
_FOOTNOTE_REF = re.compile(r"\s*\[(?:#[\w-]*|\d+|\*|[A-Za-z][\w-]*)\]_")
_SUBSTITUTION = re.compile(r"\|(\w[\w .-]*?)\|_{0,2}")
_ESCAPE = re.compile(r"\\(.)|\\$", re.S)
_TARGET_IN_TEXT = re.compile(r"^(.*?)\s*<([^<>]+)>$", re.S)
_PLACEHOLDER = re.compile("\x00(\\d+)\x00")


def _role_text(role: str, content: str) -> str:
    """What a role renders as: its title (``text <target>``) or its target, simplified."""
    content = content.replace("\\`", "`").replace("\\ ", "")
    name = role.rsplit(":", 1)[-1]
    titled = _TARGET_IN_TEXT.match(content)
    if titled and titled.group(1) and name not in ("samp", "kbd", "code", "math"):
        return titled.group(1)
    if name in ("ref", "doc"):  # a bare label or document path: show it as words
        target = content.rsplit("/", 1)[-1] if name == "doc" else content
        return target.replace("-", " ").replace("_", " ")
    if name in ("pep", "rfc"):
        number = content.split("#", 1)[0].strip()
        return f"{name.upper()} {number}"
    if name in ("samp", "file"):
        return re.sub(r"(?<!\\)[{}]", "", content)
    if name in ("menuselection", "guilabel"):
        return content.replace("-->", ">").replace("&", "")
    if content.startswith("!"):
        content = content[1:]
    if content.startswith("~"):
        content = content[1:]
        tail = content.rsplit(".", 1)[-1]
        return tail if tail and not content.endswith(".") else content
    return content


def clean_inline(text: str) -> str:
    """Strip reST inline markup from one paragraph of text; spacing is left to the caller.

    >>> clean_inline("Use :func:`~os.path.join` and ``a*b`` with *care*.")
    'Use join and a*b with care.'
    """
    protected: list[str] = []

    def protect(value: str) -> str:
        protected.append(value)
        return f"\x00{len(protected) - 1}\x00"

    text = _LITERAL.sub(lambda m: protect(m.group(1)), text)
    text = _ROLE.sub(lambda m: protect(_role_text(m.group(1), m.group(2))), text)

    def link(match: re.Match[str]) -> str:
        titled = _TARGET_IN_TEXT.match(match.group(1))
        return titled.group(1) if titled and titled.group(1) else match.group(1)

    text = _LINK.sub(link, text)
    text = _INTERPRETED.sub(lambda m: protect(m.group(1)), text)
    text = _STRONG.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text)
    text = _FOOTNOTE_REF.sub("", text)
    text = _SUBSTITUTION.sub(r"\1", text)
    text = _ESCAPE.sub(lambda m: m.group(1) if m.group(1) not in (None, " ", "\n") else "", text)
    for _ in range(3):  # a protected role may hold a protected literal
        text = _PLACEHOLDER.sub(lambda m: protected[int(m.group(1))], text)
    return text
