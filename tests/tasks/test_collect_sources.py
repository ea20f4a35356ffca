"""The one source shape: any object with `name`, `remote` and `collect(ctx)` plugs into the collect loop."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from tasks.collect import CollectConfig, CollectSummary, build_sources, gather
from tasks.sources.base import Failure, PreviousDocuments, SourceContext, SourceSummary
from tasks.sources.builtin import BuiltinSource
from tasks.sources.document import DOCUMENTS_FILE, Document, make_doc_id, write_documents
from tasks.sources.progress import ProgressLog
from tasks.sources.wikipedia import WikipediaFailure, WikipediaSummary
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

    def collect(self, ctx: SourceContext) -> tuple[list[Document], NotesSummary]:
        self.seen = ctx
        ctx.log(f"notes: {len(self.texts)}")
        docs = [Document(make_doc_id(self.name, t), self.name, t[:10], t) for t in self.texts]
        return docs, NotesSummary(notes=len(docs), failures=[Failure("note 9", "unreadable")])


def test_a_new_source_plugs_into_the_collect_loop(tmp_path):
    notes = NotesSource(["First note text.", "Second note text.", "First note text."])
    logged: list[str] = []
    ctx = SourceContext(progress=ProgressLog(tmp_path), log=logged.append)
    docs, summaries = gather([notes, NotesSource(["Second note text."])], ctx)

    assert [d.text for d in docs] == ["First note text.", "Second note text."]  # one row per doc_id
    assert notes.seen is ctx and logged == ["notes: 3", "notes: 1"]
    summary = CollectSummary.of(docs, summaries, previous=None)
    written = summary.as_dict()
    assert list(written)[:2] == ["sources", "notes"]
    assert written["notes"] == {"notes": 1, "failures": [{"title": "note 9", "error": "unreadable"}]}
    assert written["per_source"] == {"notes": 2}
    assert summary.stats()["failures"] == [{"source": "notes", "title": "note 9", "error": "unreadable"}]
    assert summary.stats()["fetched"] == 0  # no Wikipedia: its counters read zero
    json.dumps(written)


def test_builtin_summary_lists_only_its_count():
    _, summary = BuiltinSource().collect(SourceContext())
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


def test_previous_documents_are_read_per_source(tmp_path):
    path = tmp_path / DOCUMENTS_FILE
    write_documents(path, [Document("a", "web", "A", "x"), Document("b", "wikipedia", "B", "y")])
    assert set(PreviousDocuments(path).of_source("wikipedia")) == {"b"}
    assert PreviousDocuments().of_source("wikipedia") == {}


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
