"""reST tables to rows of cell text: grid tables (``+---+`` borders), simple tables
(``===  ===`` borders) and Sphinx's ``list-table`` (used by :mod:`model_runtime.corpus.rst`)."""

from __future__ import annotations

import re

from model_runtime.corpus.rst_inline import clean_inline
from model_runtime.corpus.text import collapse_spaces

GRID_BORDER = re.compile(r"^\+(?:[-=]+\+)+$")
SIMPLE_BORDER = re.compile(r"^=+(?: +=+)+$")
_SIMPLE_SPAN = re.compile(r"^[-\s]+$")
_CELL_DIRECTIVE = re.compile(r"\.\.\s+[\w:-]+::\s*")


def grid_table_rows(lines: list[str]) -> list[list[str]]:
    """Rows of a grid table (``+---+---+`` borders); spanned cells are merged."""
    border = lines[0].strip()
    columns = [i for i, char in enumerate(border) if char == "+"]
    rows: list[list[str]] = []
    cells: list[list[str]] = [[] for _ in columns[:-1]]
    for raw in lines[1:]:
        line = raw.strip()
        if GRID_BORDER.match(line):
            if any(cells):
                rows.append([" ".join(part for part in cell if part) for cell in cells])
            cells = [[] for _ in columns[:-1]]
            continue
        line = line.ljust(columns[-1] + 1)
        k = 0
        while k < len(columns) - 1:
            end = k + 1
            # a cell spans further while the boundary character is not a separator
            while end < len(columns) - 1 and line[columns[end]] != "|":
                end += 1
            cells[k].append(line[columns[k] + 1 : columns[end]].strip())
            k = end
    return rows


def simple_table_rows(lines: list[str]) -> list[list[str]]:
    """Rows of a simple table (``===  ===`` borders); continuation lines join the row above."""
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", lines[0])]
    rows: list[list[str]] = []
    for line in lines[1:]:
        if SIMPLE_BORDER.match(line.strip()) or _SIMPLE_SPAN.match(line):
            continue
        cells = []
        for k, (start, _) in enumerate(spans):
            end = spans[k + 1][0] if k + 1 < len(spans) else len(line)
            cells.append(line[start:end].strip())
        if rows and not cells[0]:
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    return rows


def render_table(rows: list[list[str]]) -> str:
    """One line per row, non-empty cells (inline markup stripped) joined by `` | ``."""
    rendered = []
    for row in rows:
        cells = [collapse_spaces(clean_inline(_CELL_DIRECTIVE.sub("", cell))) for cell in row]
        if any(cells):
            rendered.append(" | ".join(cell for cell in cells if cell))
    return "\n".join(rendered)


def list_table_rows(lines: list[str]) -> list[list[str]]:
    """Rows of a ``list-table``: ``* - cell`` starts a row, ``  - cell`` adds a cell."""
    rows: list[list[str]] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("* -"):
            rows.append([stripped[3:].strip()])
        elif stripped.startswith("- ") and rows:
            rows[-1].append(stripped[2:].strip())
        elif stripped == "-" and rows:
            rows[-1].append("")
        elif stripped and rows:
            rows[-1][-1] = f"{rows[-1][-1]} {stripped}"
    return rows
