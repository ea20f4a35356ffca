"""The one source shape: `name`, `remote` and `collect(ctx, out)` plug any object into the collect loop."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow.parquet as pq
import pytest

from tasks.collect import CollectConfig, CollectSummary, build_sources, gather
from tasks.sources.base import Failure, PreviousDocuments, SourceContext, SourceSummary
from tasks.sources.builtin import BuiltinSource
from tasks.sources.document import Document, make_doc_id
from tasks.sources.progress import ProgressLog
from tasks.sources.sink import DocumentSink
from tasks.sources.wikipedia import WikipediaFailure, WikipediaSummary
from tests.factories import collect_all, write_documents
from tinyllama_model.errors import ConfigError


@dataclass(frozen=True)
class NotesSummary(SourceSummary):
    notes: int
    failures: list[Failure] = field(default_factory=list)


class NotesSource:
    """A new source: a few notes, one of which cannot be read, and what it was handed by the run."""

    name = "notes"
    remote = False

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.seen: SourceContext | None = None

    def collect(self, ctx: SourceContext, out: DocumentSink) -> NotesSummary:
        self.seen = ctx
        ctx.log(f"notes: {len(self.texts)}")
        for t in dict.fromkeys(self.texts):  # each doc_id once
            out.write(Document(make_doc_id(self.name, t), self.name, t[:10], t))
        return NotesSummary(notes=len(self.texts), failures=[Failure("note 9", "unreadable")])


def test_a_new_source_plugs_into_the_collect_loop(tmp_path):
    notes = NotesSource(["First note text.", "Second note text.", "First note text."])
    logged: list[str] = []
    ctx = SourceContext(progress=ProgressLog(tmp_path), log=logged.append)
    parts, summaries = gather([notes], ctx, tmp_path / "work", max_bytes=1 << 20)

    rows = [r for part in parts["notes"] for path in part.paths() for r in pq.read_table(path).to_pylist()]
    assert [r["text"] for r in rows] == ["First note text.", "Second note text."]
    assert notes.seen is ctx and logged == ["notes: 3"]
    summary = CollectSummary.of(parts, summaries, previous=None)
    written = summary.as_dict()
    assert list(written)[:2] == ["sources", "notes"]
    assert written["notes"] == {"notes": 3, "failures": [{"title": "note 9", "error": "unreadable"}]}
    assert written["per_source"] == {"notes": 2}
    assert summary.stats()["failures"] == [{"source": "notes", "title": "note 9", "error": "unreadable"}]
    assert summary.stats()["fetched"] == 0  # no Wikipedia: its counters read zero
    json.dumps(written)


def test_two_sources_of_one_name_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="two collect sources are named 'notes'"):
        gather([NotesSource(["a"]), NotesSource(["b"])], SourceContext(), tmp_path, max_bytes=1 << 20)


def test_builtin_summary_lists_only_its_count():
    _, summary = collect_all(BuiltinSource())
    assert summary.as_dict() == {"documents": summary.documents} and summary.failures == ()


def test_wikipedia_summary_writes_the_keys_of_summary_json_in_order():
    summary = WikipediaSummary(titles_found=3, fetched=1, retries=2)
    summary.failures += [WikipediaFailure("A", "503", True), WikipediaFailure("B", "503", False)]
    assert summary.as_dict() == {
        "titles_found": 3,
        "per_topic": {},
        "skipped_missing": 0,
        "skipped_disambiguation": 0,
        "reused": 0,
        "resumed": 0,
        "fetched": 1,
        "failures": [
            {"title": "A", "error": "503", "kept_previous": True},
            {"title": "B", "error": "503", "kept_previous": False},
        ],
        "failed": 2,
        "lost": 1,
        "retries": 2,
    }
    assert list(summary.as_dict())[-4:] == ["failures", "failed", "lost", "retries"]  # summary.json order


def test_previous_documents_are_streamed_per_source(tmp_path):
    first, second = tmp_path / "documents-00000.parquet", tmp_path / "documents-00001.parquet"
    write_documents(
        first, [Document("a", "web", "A", "x"), Document("b", "wikipedia", "B", "y", revision_id=7)]
    )
    write_documents(second, [Document("c", "wikipedia", "C", "z", revision_id=8)])
    previous = PreviousDocuments((first, second))
    assert previous.revisions("wikipedia") == {"b": 7, "c": 8}
    assert [d.text for d in previous.documents("wikipedia", {"c", "a"})] == ["z"]  # "a" is web's
    assert PreviousDocuments().revisions("wikipedia") == {}


def test_sources_are_built_in_listing_order_from_their_sections(tmp_path):
    (tmp_path / "a.txt").write_text("text")
    cfg = CollectConfig(
        builtin=True,
        user_agent="tinyllama-tests/0.1 (tests@example.org)",
        local={"paths": [str(tmp_path / "a.txt")]},
        web={"urls": ["https://example.org/"]},
    )
    assert [(s.name, s.remote) for s in build_sources(cfg)] == [
        ("builtin", False),
        ("local", False),
        ("web", True),
        ("wikipedia", True),
    ]


@pytest.mark.parametrize("agent", [None, "my-bot"])
def test_network_sources_refuse_a_missing_or_bad_user_agent(agent):
    with pytest.raises(ConfigError, match=r"collect\.user_agent"):
        build_sources(
            CollectConfig(user_agent=agent, wikipedia={"enabled": False}, web={"urls": ["https://x.org"]})
        )
