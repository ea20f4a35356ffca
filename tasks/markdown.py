"""Text from outside (pages, API answers, files, model output) placed into Markdown that a UI renders.

The Prefect UI and MLflow render Markdown, and Markdown passes HTML and images through: a page whose
Content-Type reads `![x](http://tracker/p.gif)`, or a generation that writes a line of backticks and
then `<img src=...>`, would make every viewer's browser fetch what the page chose. So every cell, every
line and every sample that did not come from this code goes through one of these helpers:

- `cell(text)`: one table cell, one line, punctuation escaped (no links, images, emphasis or HTML), `|`
  escaped so the row keeps its columns, cut to a length;
- `text(text)`: the same for free text in a paragraph (line breaks kept as Markdown line breaks);
- `code(text)`: an inline code span whose backtick run is longer than any inside it;
- `fenced(text)`: a fenced block whose fence is longer than any backtick run inside it, so no line of
  the content can close it.
"""

from __future__ import annotations

import re

MAX_CELL_CHARS = 300
MAX_TEXT_CHARS = 2000
ELLIPSIS = "…"

# Markdown's inline syntax plus what autolinks need (`http:`, `www.`, `a@b.c`); `&<>` become entities
# rather than backslash escapes so that no renderer, CommonMark or not, sees a tag or an entity.
_MARKDOWN_PUNCT = re.compile(r"([\\`*_{}\[\]()#!|~:.])")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]")
_BACKTICKS = re.compile(r"`+")


def _cut(value: object, max_chars: int) -> str:
    raw = str(value)
    return raw if len(raw) <= max_chars else raw[: max(max_chars - 1, 0)] + ELLIPSIS


def _escape(raw: str) -> str:
    raw = "".join(_ENTITIES.get(ch, ch) for ch in raw)
    return _MARKDOWN_PUNCT.sub(r"\\\1", raw)


def cell(value: object, max_chars: int = MAX_CELL_CHARS) -> str:
    """`value` as one inert table cell: a single line, Markdown and HTML escaped, at most `max_chars`."""
    one_line = " ".join(_CONTROL.sub(" ", _cut(value, max_chars)).split())
    return _escape(one_line)


def text(value: object, max_chars: int = MAX_TEXT_CHARS) -> str:
    """`value` as inert paragraph text: escaped like a cell, its lines kept (a blank line stays a line)."""
    lines = _CONTROL.sub(" ", _cut(value, max_chars)).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "  \n".join(_escape(" ".join(line.split())) for line in lines)


def _longest_run(raw: str) -> int:
    return max((len(run) for run in _BACKTICKS.findall(raw)), default=0)


def code(value: object, max_chars: int = MAX_CELL_CHARS) -> str:
    """`value` as an inline code span (one line) that no backtick inside it can end early."""
    raw = " ".join(_CONTROL.sub(" ", _cut(value, max_chars)).split()).replace("|", "\\|")
    fence = "`" * (_longest_run(raw) + 1)
    pad = " " if raw.startswith("`") or raw.endswith("`") or not raw else ""
    return f"{fence}{pad}{raw}{pad}{fence}"


def fenced(value: object, info: str = "text", max_chars: int | None = None) -> str:
    """`value` as a fenced code block: its fence is longer than every backtick run in it (at least 3)."""
    raw = str(value) if max_chars is None else _cut(value, max_chars)
    raw = raw.replace("\r\n", "\n").replace("\r", "\n")
    fence = "`" * max(3, _longest_run(raw) + 1)
    return f"{fence}{info}\n{raw}\n{fence}"
