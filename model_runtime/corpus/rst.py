"""reStructuredText (as Sphinx writes it to ``_sources/*.rst.txt``) to plain text.

Not a full reST parser: enough of the block and inline grammar to turn the Python documentation
into readable prose. Headings become their own paragraphs (with a level, so callers can cut a
file into sections), directives are rendered by kind (admonitions as "Note: ...", version notes
as "Changed in version 3.3: ...", API descriptions as their signature followed by the body;
index, toctree and other bookkeeping dropped), roles become their text (:func:`~os.path.join`
-> join, :ref:`text <label>` -> text, :pep:`8` -> PEP 8), tables become one line per row with
cells separated by " | ", literal blocks become fenced code.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from typing import Literal

from model_runtime.corpus.rst_inline import clean_inline
from model_runtime.corpus.rst_tables import (
    GRID_BORDER,
    SIMPLE_BORDER,
    grid_table_rows,
    list_table_rows,
    render_table,
    simple_table_rows,
)
from model_runtime.corpus.text import collapse_spaces

BlockKind = Literal["heading", "text", "item", "code"]


@dataclass(frozen=True)
class Block:
    """One rendered block. ``level`` is the heading depth (1 = title) for headings, else 0."""

    kind: BlockKind
    text: str
    level: int = 0


# --- block grammar ---------------------------------------------------------------------------

_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1{2,}$")
_DIRECTIVE = re.compile(r"^\.\.\s+([A-Za-z][\w:.-]*)::(?:\s+(.*))?$")
_EXPLICIT = re.compile(r"^\.\.(?:\s|$)")
_ANONYMOUS_TARGET = re.compile(r"^__ ")
_BULLET = re.compile(r"^(?:[-*+\u2022]|#\.|\d+\.|\(\d+\)|\d+\))\s+(?=\S)")
_FIELD = re.compile(r"^:([^:`\s][^:`]*):(?:\s+(.*))?$")
_LINE_BLOCK = re.compile(r"^\|(?: |$)")
# Sphinx file-wide metadata fields (``:orphan:`` at the top of a page): not text.
_FILE_METADATA = frozenset({"orphan", "nosearch", "tocdepth", "nocomments", "audience"})

_SKIPPED_DIRECTIVES = frozenset(
    {
        "index", "toctree", "highlight", "sectionauthor", "moduleauthor", "currentmodule",
        "module", "audit-event", "tabularcolumns", "testsetup", "testcleanup", "include",
        "literalinclude", "image", "figure", "raw", "contents", "productionlist", "program",
        "miscnews", "limited-api-list", "default-role", "role", "meta", "auditevents",
        "code-block-caption", "graphviz", "seealso-links", "c:namespace", "cpp:namespace",
    }
)  # fmt: skip
_ADMONITIONS = {
    "note": "Note",
    "warning": "Warning",
    "important": "Important",
    "caution": "Caution",
    "tip": "Tip",
    "hint": "Hint",
    "attention": "Attention",
    "danger": "Danger",
    "error": "Error",
    "seealso": "See also",
    "impl-detail": "CPython implementation detail",
}
_CODE_DIRECTIVES = frozenset(
    {"code-block", "sourcecode", "code", "doctest", "testcode", "testoutput", "parsed-literal"}
)
# API descriptions: the directive's argument is a signature; Sphinx prefixes some with a word.
_DESCRIPTION_PREFIX = {
    "class": "class ",
    "exception": "exception ",
    "decorator": "@",
    "decoratormethod": "@",
    "classmethod": "classmethod ",
    "staticmethod": "staticmethod ",
    "abstractmethod": "abstractmethod ",
    "coroutinefunction": "coroutine ",
    "coroutinemethod": "coroutine ",
    "awaitablefunction": "awaitable ",
    "awaitablemethod": "awaitable ",
}
_DESCRIPTIONS = frozenset(
    {
        "function", "method", "attribute", "data", "opcode", "describe", "object", "envvar",
        "cmdoption", "option", "pdbcommand", "2to3fixer", "property", "type",
        "c:function", "c:macro", "c:type", "c:member", "c:var", "c:struct", "c:union",
        "c:enum", "c:enumerator", "c:data", "c:func", "cpp:function", "cpp:class",
    }
) | frozenset(_DESCRIPTION_PREFIX)  # fmt: skip


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _take_indented(
    lines: list[str], start: int, *, keep_leading_blank: bool = False
) -> tuple[list[str], int]:
    """Lines from ``start`` that are blank or indented, dedented; and the index after them.

    ``keep_leading_blank`` keeps one leading blank line (a directive's options come right
    after it; a blank line first means there are none)."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > 0):
        end += 1
    block = lines[start:end]
    while block and not block[-1].strip():
        block.pop()
    leading_blank = bool(block) and not block[0].strip()
    while block and not block[0].strip():
        block.pop(0)
    if not block:
        return [], end
    dedented = textwrap.dedent("\n".join(block)).split("\n")
    return ([""] if keep_leading_blank and leading_blank else []) + dedented, end


class _Parser:
    """Turns the lines of one reST document into blocks; directives recurse into their body."""

    def __init__(self) -> None:
        self.heading_styles: list[tuple[str, bool]] = []

    def heading_level(self, char: str, overline: bool) -> int:
        style = (char, overline)
        if style not in self.heading_styles:
            self.heading_styles.append(style)
        return self.heading_styles.index(style) + 1

    def parse(self, lines: list[str]) -> list[Block]:
        blocks: list[Block] = []
        paragraph: list[str] = []
        paragraph_indent = 0
        literal_next = False

        def flush() -> None:
            nonlocal paragraph, literal_next
            if paragraph:
                block, literal = self.paragraph_block(paragraph)
                if block is not None:
                    blocks.append(block)
                literal_next = literal
                paragraph = []

        i = 0
        while i < len(lines):
            line = lines[i]
            stripped = line.strip()
            indent = _indent(line)
            if not stripped:
                flush()
                i += 1
                continue
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if paragraph and indent > paragraph_indent and not _starts_item(paragraph[0]):
                flush()  # a definition-list term followed by its indented definition
            if paragraph and indent > paragraph_indent and not _BULLET.match(stripped):
                paragraph.append(line)  # continuation of a list item
                i += 1
                continue
            if indent > 0:
                flush()
                if literal_next:
                    # the literal block ends at the first line indented less than its start
                    # (in a list item, the item's next paragraph)
                    end = i
                    while end < len(lines) and (
                        not lines[end].strip() or _indent(lines[end]) >= indent
                    ):
                        end += 1
                    code = textwrap.dedent("\n".join(lines[i:end])).strip("\n")
                    blocks.append(Block("code", code))
                    i = end
                else:
                    block_lines, i = _take_indented(lines, i)
                    blocks.extend(self.parse(block_lines))
                literal_next = False
                continue
            literal_next = False
            # headings: text over an adornment line, or adornment / text / adornment
            over = _ADORNMENT.match(stripped)
            if over and i + 2 < len(lines) and following and not _ADORNMENT.match(following):
                under = _ADORNMENT.match(lines[i + 2].strip())
                if under and under.group(1) == over.group(1):
                    flush()
                    level = self.heading_level(over.group(1), True)
                    blocks.append(Block("heading", _clean_line(following), level))
                    i += 3
                    continue
            if over and paragraph:  # underline of the paragraph's last line
                title = paragraph.pop()
                flush()
                level = self.heading_level(over.group(1), False)
                blocks.append(Block("heading", _clean_line(title), level))
                i += 1
                continue
            if over:
                i += 1  # a transition (horizontal rule)
                continue
            under = _ADORNMENT.match(following) if following else None
            if under and not paragraph and len(following) >= min(len(stripped), 3):
                level = self.heading_level(under.group(1), False)
                blocks.append(Block("heading", _clean_line(stripped), level))
                i += 2
                continue
            if GRID_BORDER.match(stripped) or SIMPLE_BORDER.match(stripped):
                flush()
                i = self.table(lines, i, blocks)
                continue
            directive = _DIRECTIVE.match(stripped)
            if directive:
                flush()
                body, i = _take_indented(lines, i + 1, keep_leading_blank=True)
                blocks.extend(self.directive(directive.group(1), directive.group(2) or "", body))
                continue
            if _EXPLICIT.match(stripped) or _ANONYMOUS_TARGET.match(stripped):
                flush()  # comment, hyperlink target, footnote or substitution definition
                _, i = _take_indented(lines, i + 1)
                continue
            if paragraph and (_starts_item(stripped) or stripped.startswith(">>>")):
                flush()
            if not paragraph:
                paragraph_indent = indent
            paragraph.append(line)
            i += 1
        flush()
        return blocks

    def paragraph_block(self, lines: list[str]) -> tuple[Block | None, bool]:
        """Render one paragraph; the flag says whether a literal block follows (``::``)."""
        if lines[0].startswith(">>>"):
            return Block("code", "\n".join(lines)), False
        text = " ".join(_LINE_BLOCK.sub("", line.strip()) for line in lines)
        literal = text.endswith("::")
        if literal:
            text = (
                text[:-2].rstrip() if text[:-2].endswith((" ", "\t")) or text == "::" else text[:-1]
            )
        text = collapse_spaces(clean_inline(text))
        if not text:
            return None, literal
        field = _FIELD.match(text)
        if field and field.group(1).strip().lower() in _FILE_METADATA:
            return None, literal
        if field:
            text = f"{field.group(1)}: {field.group(2) or ''}".strip()
            return Block("item", text), literal
        bullet = _BULLET.match(text)
        if bullet:
            marker = bullet.group(0).strip()
            marker = "-" if marker in ("*", "+", "\u2022", "-") else marker
            return Block("item", f"{marker} {text[bullet.end() :]}"), literal
        return Block("text", text), literal

    def table(self, lines: list[str], start: int, blocks: list[Block]) -> int:
        first = lines[start].strip()
        end = start + 1
        if GRID_BORDER.match(first):
            while end < len(lines) and lines[end].strip()[:1] in ("+", "|"):
                end += 1
            rows = grid_table_rows([line.strip() for line in lines[start:end]])
        else:
            while end < len(lines):
                current = lines[end].strip()
                end += 1
                if SIMPLE_BORDER.match(current) and (end >= len(lines) or not lines[end].strip()):
                    break
            rows = simple_table_rows(lines[start:end])
        table = render_table(rows)
        if table:
            blocks.append(Block("text", table))
        return end

    def directive(self, name: str, argument: str, body: list[str]) -> list[Block]:
        """Render one directive from its name, argument and dedented body (options included)."""
        if name in _SKIPPED_DIRECTIVES:
            return []
        head: list[str] = []  # body lines before the first blank line
        k = 0
        while k < len(body) and body[k].strip():
            head.append(body[k])
            k += 1
        options = {n for n, line in enumerate(head) if _FIELD.match(line.strip())}
        kept_head = [line for n, line in enumerate(head) if n not in options]
        if name in _DESCRIPTIONS:
            signatures = [argument, *(line.strip() for line in kept_head)]
            prefix = _DESCRIPTION_PREFIX.get(name, "")
            blocks = [
                Block("text", prefix + collapse_spaces(signature))
                for signature in signatures
                if signature
            ]
            return blocks + self.parse(body[k:])
        content = kept_head + body[k:]
        if name == "only":
            argument = ""  # a build condition ("html"), not text
        if name in _CODE_DIRECTIVES:
            code = textwrap.dedent("\n".join(content)).strip("\n")
            if name == "parsed-literal":
                code = clean_inline(code)
            return [Block("code", code)] if code else []
        if name == "list-table":
            table = render_table(list_table_rows(content))
            return [Block("text", table)] if table else []
        if name in ("versionadded", "versionchanged", "deprecated", "deprecated-removed"):
            return self.version_note(name, argument, content)
        if name == "availability":
            text = collapse_spaces(clean_inline(" ".join([argument, *content])))
            return [Block("text", f"Availability: {text}")]
        if name == "rubric":
            return [Block("text", _clean_line(argument))] if argument else []
        label = _ADMONITIONS.get(name)
        if name in ("admonition", "topic", "sidebar") and argument:
            label, argument = _clean_line(argument), ""
        if label is None:  # only, hlist, glossary, centered, epigraph, table, unknown ones
            lines = ([argument, ""] if argument else []) + content
            return self.parse(lines)
        return _labelled(label, self.parse(([argument] if argument else []) + content))

    def version_note(self, name: str, argument: str, content: list[str]) -> list[Block]:
        words = argument.split(None, 2 if name == "deprecated-removed" else 1)
        if name == "deprecated-removed":
            versions, rest = words[:2], words[2:]
            if len(versions) == 2:
                label = (
                    f"Deprecated since version {versions[0]}, "
                    f"will be removed in version {versions[1]}"
                )
            else:
                label = f"Deprecated since version {' '.join(versions)}"
        else:
            version, rest = (words[0] if words else ""), words[1:]
            label = {
                "versionadded": "New in version",
                "versionchanged": "Changed in version",
                "deprecated": "Deprecated since version",
            }[name] + f" {version}"
        body = self.parse(rest + content)
        if not body:
            return [Block("text", label + ".")]
        return _labelled(label, body)


def _starts_item(line: str) -> bool:
    return bool(_BULLET.match(line) or _FIELD.match(line))


def _clean_line(text: str) -> str:
    return collapse_spaces(clean_inline(text))


def _labelled(label: str, blocks: list[Block]) -> list[Block]:
    """Prefix the first text block with ``label: `` (or put the label in front of the body)."""
    if blocks and blocks[0].kind == "text":
        return [Block("text", f"{label}: {blocks[0].text}"), *blocks[1:]]
    return [Block("text", f"{label}:"), *blocks]


def rst_blocks(source: str) -> list[Block]:
    """Parse one reST document into rendered blocks."""
    lines = source.expandtabs(8).replace("\r\n", "\n").split("\n")
    return _Parser().parse([line.rstrip() for line in lines])


def render_blocks(blocks: list[Block]) -> str:
    """Join rendered blocks: paragraphs by blank lines, adjacent list items by one newline,
    code fenced with triple backticks."""
    parts: list[str] = []
    previous: BlockKind | None = None
    for block in blocks:
        text = f"```\n{block.text}\n```" if block.kind == "code" else block.text
        if parts and block.kind == "item" and previous == "item":
            parts.append("\n")
        elif parts:
            parts.append("\n\n")
        parts.append(text)
        previous = block.kind
    return "".join(parts)


def rst_to_text(source: str) -> str:
    """reST source to plain text (see the module docstring for what is kept)."""
    return render_blocks(rst_blocks(source))
