"""Hostile text from pages, APIs and the model stays inert in every Markdown the UIs render: rendered with
a real CommonMark renderer (tables on), no image, link or HTML tag comes out, tables keep their columns
and a generation stays inside its code block."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from tasks import markdown as md
from tasks.cleaning.report import report_markdown
from tasks.collect import summary_markdown
from tasks.evaluate import evaluation_markdown
from tasks.register import RegisterConfig, registration_markdown
from tasks.tracking.model_card import ModelCard
from tasks.tracking.run_reports import samples_markdown

# What a page's Content-Type, title or error text may carry.
HOSTILE = (
    "![pixel](http://tracker.invalid/p.gif) <img src=http://tracker.invalid/i.gif> "
    "[click](http://evil.invalid/) <script>alert(1)</script> a | b\n| c | d |\r*x* `y` www.evil.invalid"
)
# What a generation may write: a fence that would close the block, then an image and HTML.
GENERATION = (
    "fine\n```\n![p](http://tracker.invalid/g.gif)\n<img src=http://tracker.invalid/h.gif>\n````\nend"
)
RENDER = MarkdownIt("commonmark", {"html": True}).enable("table")


def html(markdown: str) -> str:
    return RENDER.render(markdown)


def assert_inert(markdown: str) -> str:
    rendered = html(markdown)
    for tag in ("<img", "<a ", "<script"):
        assert tag not in rendered, f"{tag} rendered from:\n{markdown}\n->\n{rendered}"
    return rendered


def table_widths(rendered: str) -> list[int]:
    """Cells per row of every rendered table row."""
    return [len(re.findall(r"<t[dh][ >]", row)) for row in re.findall(r"<tr>.*?</tr>", rendered, re.S)]


def code_blocks(rendered: str) -> list[str]:
    return re.findall(r"<pre><code[^>]*>(.*?)</code></pre>", rendered, re.S)


# -- the helpers --------------------------------------------------------------------------------------------


def test_cell_is_one_inert_cell_that_still_reads_as_the_text() -> None:
    row = f"| {md.cell(HOSTILE)} | 2 |"
    rendered = assert_inert("| a | b |\n|---|---|\n" + row)
    assert table_widths(rendered) == [2, 2]
    assert "![pixel](http://tracker.invalid/p.gif)" in RENDER.renderInline(md.cell(HOSTILE))  # shown as text
    assert "http:" not in md.cell(HOSTILE) and "www." not in md.cell(HOSTILE)  # no autolink either


def test_cell_and_text_are_cut_to_their_length() -> None:
    assert md.cell("x" * 50, max_chars=10) == "x" * 9 + md.ELLIPSIS
    assert len(md.text("y" * 5000)) == md.MAX_TEXT_CHARS


def test_fence_outlasts_every_backtick_run_in_the_content() -> None:
    block = md.fenced(GENERATION)
    rendered = assert_inert(block + "\n\nafter the block")
    [inside] = code_blocks(rendered)
    assert "```" in inside and "end" in inside and "after the block" not in inside
    assert md.fenced("plain") == "```text\nplain\n```"  # unchanged when nothing needs more


def test_code_span_is_not_ended_by_backticks_inside() -> None:
    rendered = RENDER.renderInline(md.code("a ``b`` <img src=x>"))
    assert rendered.startswith("<code>") and rendered.endswith("</code>") and "<img" not in rendered


# -- every builder of what the UIs show --------------------------------------------------------------------


def test_collect_summary_failures_table() -> None:
    stats = {
        "documents": 1,
        "characters": 10,
        "per_source": {"web": 1, HOSTILE: 2},
        "fetched": 0,
        "reused": 0,
        "skipped_disambiguation": 0,
        "skipped_missing": 0,
        "failed": 1,
        "failures": [{"source": "web", "title": HOSTILE, "error": f"content type {HOSTILE!r} is not HTML"}],
    }
    rendered = assert_inert(summary_markdown(stats))
    assert table_widths(rendered) == [2, 2, 2, 3, 3]


def test_preprocess_report_by_source_table() -> None:
    report = {
        "documents_in": 1,
        "documents_kept": 1,
        "rows_out": 1,
        "split_documents": 0,
        "rejected": 0,
        "characters": {"in": 1, "after_normalization": 1, "out": 1},
        "stages": [{"stage": "normalize", "in": 1, "dropped": 0, "out": 1}],
        "by_source": {HOSTILE: {"in": 1, "rejected": 0, "rows_out": 1}},
        "length_chars": {"p50": 1.0},
        "histogram": [{"characters": "0-100", "documents": 1}],
    }
    rendered = assert_inert(report_markdown(report))
    assert table_widths(rendered)[2:4] == [4, 4]


def test_model_card_sources_and_samples() -> None:
    card = ModelCard(
        model_name="tinyllama",
        sources={HOSTILE: {"in": 3, "kept": 2}},
        samples=[("The prompt", GENERATION)],
    )
    rendered = assert_inert(card.markdown())
    assert table_widths(rendered) == [3, 3]
    [sample] = code_blocks(rendered)
    assert sample.startswith("The promptfine") and sample.rstrip().endswith("end")
    assert "<h2>Limits</h2>" in rendered  # the sections after the samples still parse


def test_samples_file_and_evaluation_artifact() -> None:
    for markdown in (
        samples_markdown([("The prompt", GENERATION)]),
        evaluation_markdown(
            {"val_bpb": 1.0, "val_loss": 1.0, "val_perplexity": 2.0, "documents": 1, "tokens": 2, "bytes": 3},
            {"The prompt": GENERATION},
        ),
    ):
        rendered = assert_inert(markdown)
        [sample] = code_blocks(rendered)
        assert sample.rstrip().endswith("end")


@pytest.mark.parametrize("field", ["model_uri", "tracking_uri", "previous_champion"])
def test_registration_summary(field: str) -> None:
    stats = {
        "run_id": "abc",
        "run_link": "[run](http://127.0.0.1:5000/#/runs/abc)",
        "tracking_uri": "http://127.0.0.1:5000",
        "model_uri": "models:/tinyllama/2",
        "reused_version": False,
        "val_bpb": 2.5,
        "previous_champion": 1,
        "previous_champion_value": None,
        "champion_version": 1,
        "champion_moved": False,
        field: "x` <img src=http://tracker.invalid/r.gif> |",
    }
    rendered = html(registration_markdown(RegisterConfig(), stats))
    assert "<img" not in rendered and table_widths(rendered) == [2] * 6


def test_samples_json_from_disk_round_trip(tmp_path: Path) -> None:
    """The samples the register phase reads back are the ones evaluate wrote, hostile or not."""
    path = tmp_path / "samples.json"
    path.write_text(json.dumps({"p": GENERATION}))
    assert GENERATION in html(samples_markdown(list(json.loads(path.read_text()).items()))).replace(
        "&lt;", "<"
    ).replace("&gt;", ">")
