"""Main text out of an HTML page (web pages and local .html files), paragraphs kept.

Navigation, headers, footers, asides, scripts and styles are removed; if the page marks its content
with <main> or <article>, only that is read. Block elements (p, h1-h6, li, pre, ...) become
paragraphs separated by blank lines; whitespace inside a paragraph is collapsed except in <pre>.

HTML bombs: lexbor's parse time grows with the square of the nesting depth (docs/tuning-log.md), so
the depth is estimated with a cheap tag scan first and a page nested deeper than `max_depth` is refused
before it reaches the parser. Size is bounded by whoever reads the bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from selectolax.lexbor import LexborHTMLParser, LexborNode

DROP_TAGS = (
    "script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form", "svg",
    "iframe", "button", "select", "canvas", "object", "embed", "menu", "dialog",
)  # fmt: skip
BLOCK_TAGS = frozenset(
    {
        "p", "div", "section", "article", "main", "h1", "h2", "h3", "h4", "h5", "h6", "li", "ul", "ol",
        "pre", "blockquote", "table", "tr", "td", "th", "dd", "dt", "dl", "figcaption", "figure",
        "address", "details", "summary", "caption", "body", "html",
    }
)  # fmt: skip
# Elements that never hold children, or that the parser closes implicitly, so they cannot nest deep.
_NO_DEPTH = frozenset(
    {
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
        "track", "wbr", "p", "li", "dt", "dd", "tr", "td", "th", "option", "b", "i", "a", "font",
    }
)  # fmt: skip
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)[^>]*?(/?)>")
_SPACES = re.compile(r"\s+")


class HTMLBombError(ValueError):
    """The page is nested too deeply to parse in reasonable time."""


def estimate_depth(html: str, stop_at: int) -> int:
    """Nesting depth by counting open/close tags (an upper bound for sane pages); stops past `stop_at`."""
    depth = deepest = 0
    for m in _TAG.finditer(html):
        closing, tag, self_closing = m.group(1), m.group(2).lower(), m.group(3)
        if tag in _NO_DEPTH or self_closing:
            continue
        if closing:
            depth = max(depth - 1, 0)
        else:
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_at:
                    break
    return deepest


def html_to_text(html: str, *, max_depth: int = 2000) -> tuple[str, str]:
    """(title, text) of an HTML document; raises HTMLBombError for pathological nesting."""
    depth = estimate_depth(html, max_depth)
    if depth > max_depth:
        raise HTMLBombError(
            f"HTML nested more than {max_depth} levels deep (max_html_depth); refused to parse"
        )
    tree = LexborHTMLParser(html)
    title_node = tree.css_first("title")
    title = _SPACES.sub(" ", title_node.text()).strip() if title_node is not None else ""
    for tag in DROP_TAGS:
        for node in tree.css(tag):
            node.decompose()
    root = tree.css_first("main") or tree.css_first("article") or tree.body or tree.root
    if not title:
        h1 = root.css_first("h1") if root is not None else None
        title = _SPACES.sub(" ", h1.text()).strip() if h1 is not None else ""
    return title, _paragraphs(root) if root is not None else ""


def _block_of(node: LexborNode) -> LexborNode | None:
    """The nearest block element above `node` (walks up: used once per page, for the root)."""
    parent = node.parent
    while parent is not None and parent.tag not in BLOCK_TAGS:
        parent = parent.parent
    return parent


def _text_nodes(root: LexborNode) -> Iterator[tuple[LexborNode, LexborNode | None]]:
    """(node, its nearest block ancestor) for `root` and every node below it, in document order.

    Each node is visited once and hands its block down to its children, so the work is linear in the
    page; walking up from every text node instead was quadratic in the nesting.
    """
    stack: list[tuple[LexborNode, LexborNode | None]] = [(root, _block_of(root))]
    while stack:
        node, block = stack.pop()
        yield node, block
        inner = node if node.tag in BLOCK_TAGS else block
        children = []
        child = node.child
        while child is not None:
            children.append((child, inner))
            child = child.next
        stack.extend(reversed(children))


def _paragraphs(root: LexborNode) -> str:
    paragraphs: list[str] = []
    current: list[str] = []
    current_block: int | None = None
    preformatted = False

    def flush() -> None:
        text = "".join(current)
        text = text.strip("\n") if preformatted else _SPACES.sub(" ", text).strip()
        if text.strip():
            paragraphs.append(text)
        current.clear()

    for node, block in _text_nodes(root):
        if node.tag == "br":
            current.append("\n")
            continue
        if not node.is_text_node:
            continue
        block_id = block.mem_id if block is not None else None
        if block_id != current_block:
            flush()
            current_block = block_id
            preformatted = block is not None and block.tag == "pre"
        current.append(node.text_content or "")
    flush()
    return "\n\n".join(paragraphs)
