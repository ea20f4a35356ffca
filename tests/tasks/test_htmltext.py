"""Text extraction from HTML: its paragraphs, and work that grows linearly with the page."""

from __future__ import annotations

import sys

import pytest

import tasks.sources.htmltext as htmltext
from tasks.sources.htmltext import html_to_text


@pytest.mark.parametrize(
    "html, text",
    [
        ("<div>a<span>b<div>c</div>d</span>e</div><p>f<br>g</p>", "ab\n\nc\n\nde\n\nf g"),
        (
            "<body>top<ul><li>one <b>bold</b> two<li>three</ul><pre>  x\n   y</pre>tail"
            "<table><tr><td>c1<td>c2</table></body>",
            "top\n\none bold two\n\nthree\n\n  x\n   y\n\ntail\n\nc1\n\nc2",
        ),
        (
            "<article><h2>T</h2><p>p1</p>loose text<section><p>p2 <i>it</i></p></section>after</article>",
            "T\n\np1\n\nloose text\n\np2 it\n\nafter",
        ),
    ],
)
def test_blocks_become_paragraphs_and_inline_text_joins(html, text):
    assert html_to_text(html)[1] == text


def nested_spans(n: int) -> str:
    """n spans, each holding a word and the next span: every word one level deeper than the last."""
    return (
        "<html><body><p>" + "".join(f"<span>w{i} " for i in range(n)) + "</span>" * n + "</p></body></html>"
    )


def lines_run(html: str) -> int:
    """Python lines executed inside htmltext while extracting `html`: the extractor's work, untimed."""
    count = 0

    def tracer(frame, event, _arg):
        nonlocal count
        if frame.f_code.co_filename != htmltext.__file__:
            return None
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        html_to_text(html)
    finally:
        sys.settrace(None)
    return count


def test_extraction_work_is_linear_in_nesting():
    """Doubling the nesting doubles the work (the old upward walk per text node quadrupled it)."""
    assert html_to_text(nested_spans(3))[1] == "w0 w1 w2"
    small, large = lines_run(nested_spans(300)), lines_run(nested_spans(600))
    assert large / small < 2.5, (small, large)
