"""Wikipedia collection against a loopback MediaWiki API: batching, skips, faults, resume, increments."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from tasks.collect import CollectConfig, run_collect
from tasks.sources.base import SourceContext
from tasks.sources.document import DOCUMENTS_TABLE
from tasks.sources.errors import TooManyFailuresError, TransientSourceError
from tasks.sources.mediawiki import MediaWikiClient, extract_to_text
from tasks.sources.progress import ProgressLog
from tasks.sources.retry import RetryConfig
from tasks.sources.wikipedia import WikipediaConfig, WikipediaSource
from tests.factories import collect_all, read_documents
from tests.tasks.fakes.mediawiki import FakeMediaWiki, article
from tinyllama_model.errors import ConfigError

AGENT = "tinyllama-tests/0.1 (https://example.org/tests; tests@example.org)"
FAST = RetryConfig(retries=4, backoff_s=0.001, max_backoff_s=0.01, jitter=0.5)


def populate(wiki: FakeMediaWiki, n_ai: int = 8, n_ml: int = 6) -> None:
    for i in range(n_ai):
        wiki.add(f"AI page {i}", article(f"AI page {i}"), topics=("artificial intelligence",))
    for i in range(n_ml):
        wiki.add(f"ML page {i}", article(f"ML page {i}"), topics=("machine learning",))


def wiki_cfg(wiki: FakeMediaWiki, **kw) -> WikipediaConfig:
    base = dict(
        topics=["artificial intelligence", "machine learning"],
        api_url=wiki.url,
        search_batch=3,
        retry=FAST,
        timeout_s=2.0,
    )
    return WikipediaConfig(**{**base, **kw})


def collect(wiki: FakeMediaWiki, cfg: WikipediaConfig, progress: ProgressLog | None = None):
    """(documents, summary, the waits the retry policy asked for)."""
    sleeps: list[float] = []
    source = WikipediaSource(cfg, AGENT, sleep=sleeps.append)
    documents, summary = collect_all(source, SourceContext(progress=progress or ProgressLog(None)))
    return documents, summary, sleeps


def test_search_pages_with_continuation_and_batches_titles(wiki):
    populate(wiki, n_ai=70, n_ml=4)
    wiki.search_index["machine learning"] += ["AI page 1", "AI page 2"]  # found by both topics
    wiki.add(
        "Mercury",
        "Mercury may refer to: a planet, an element.",
        topics=("machine learning",),
        disambiguation=True,
    )
    wiki.search_index["machine learning"].append("Deleted page")  # in the index, gone from the wiki
    wiki.redirects["ML alias"] = "ML page 0"
    wiki.search_index["machine learning"].append("ML alias")  # a second route to ML page 0

    cfg = wiki_cfg(wiki, search_batch=20, articles_per_topic=65)
    documents, summary, _ = collect(wiki, cfg)

    titles = [d.title for d in documents]
    assert len(titles) == len(set(titles)) == 65 + 4
    assert "Mercury" not in titles and "Deleted page" not in titles
    assert summary.skipped_disambiguation == 1
    assert summary.skipped_missing == 1
    by_title = {d.title: d for d in documents}
    assert by_title["AI page 1"].topic == "artificial intelligence"  # first topic that found it
    assert by_title["ML page 0"].topic == "machine learning"
    assert by_title["AI page 0"].revision_id == wiki.pages["AI page 0"].revid
    assert by_title["AI page 0"].url.endswith("/wiki/AI_page_0")

    # Requests: search follows continuation 20 at a time up to the 65 asked for; revision checks go 50
    # titles at a time; whole-article extracts one per article.
    assert wiki.count("search") == math.ceil(65 / 20) + 1
    n_titles = 65 + 4 + 1 + 1 + 1  # + Mercury, Deleted page, ML alias (duplicates of AI 1/2 removed)
    assert wiki.count("info") == math.ceil(n_titles / 50)
    assert wiki.count("extracts") == 65 + 4 + 0  # the alias resolved to ML page 0: fetched once
    assert all(r.get("maxlag") == "5" and r.get("formatversion") == "2" for r in wiki.requests)
    assert all(ua.startswith(AGENT) for ua in wiki.user_agents)


def test_extract_keeps_sections_as_paragraphs():
    raw = "Intro one.\nIntro paragraph two.\n\n\n== History ==\nIt began.\n\n=== Early days ===\nSmall."
    assert extract_to_text(raw) == (
        "Intro one.\n\nIntro paragraph two.\n\nHistory\n\nIt began.\n\nEarly days\n\nSmall."
    )


def test_faults_are_retried_and_no_document_is_lost(wiki):
    populate(wiki)
    # "slow" answers 2 s after the client's 2 s timeout: the margin keeps a busy machine's ordinary
    # answers (milliseconds) from timing out, so every retry below is one the fake injected
    wiki.slow_s = 4.0
    wiki.fail("search", "503")
    wiki.fail("search", "maxlag")
    wiki.fail("info", "truncated")
    wiki.fail("info", "429", retry_after="0")
    wiki.fail("extracts", "429", title="AI page 1", retry_after="2")
    wiki.fail("extracts", "503", title="AI page 2", times=2)
    wiki.fail("extracts", "slow", title="AI page 3")
    wiki.fail("extracts", "truncated", title="ML page 0")
    wiki.fail("extracts", "garbage", title="ML page 1")

    documents, summary, sleeps = collect(wiki, wiki_cfg(wiki, timeout_s=2.0))

    assert {d.title for d in documents} == set(wiki.pages)
    assert summary.failures == []
    assert 2.0 in sleeps  # Retry-After: 2 honoured (recorded by the injected sleep, not spent)
    assert wiki.injected == 10  # every fault queued above was served
    assert summary.retries == wiki.injected
    assert wiki.count("extracts", "AI page 2") == 3
    assert all(f.times == 0 for f in wiki.faults)


def test_retry_after_is_honoured_on_503_and_maxlag_waits_for_the_lag(wiki):
    """503 + Retry-After waits as asked; maxlag waits the replica lag (or Retry-After, if longer)."""
    populate(wiki, n_ai=3, n_ml=0)
    wiki.fail("search", "503", retry_after="4")
    wiki.fail("info", "maxlag", lag=7.5, retry_after="1")
    wiki.fail("extracts", "maxlag", title="AI page 0", lag=0.6, retry_after="5")
    wiki.fail("extracts", "503", title="AI page 1", retry_after="Wed, 21 Oct 2015 07:28:00 GMT")  # past

    documents, summary, sleeps = collect(wiki, wiki_cfg(wiki, topics=["artificial intelligence"]))
    assert len(documents) == 3 and summary.retries == wiki.injected == 4
    assert sleeps == [4.0, 7.5, 5.0, 0.0]


def test_page_failing_past_retries_is_recorded_then_fails_the_phase(wiki):
    populate(wiki, n_ai=4, n_ml=0)
    wiki.fail("extracts", "503", title="AI page 2", times=100)
    cfg = wiki_cfg(wiki, topics=["artificial intelligence"], max_failure_fraction=0.5)

    documents, summary, _ = collect(wiki, cfg)
    assert [f.title for f in summary.failures] == ["AI page 2"]
    assert "503" in summary.failures[0].error
    assert len(documents) == 3

    progress = ProgressLog(None)
    with pytest.raises(TooManyFailuresError, match=r"1 of 4 .*AI page 2"):
        collect(wiki, cfg.model_copy(update={"max_failure_fraction": 0.1}), progress)


def test_persistently_malformed_json_is_recorded_not_fatal(wiki):
    populate(wiki, n_ai=3, n_ml=0)
    wiki.fail("extracts", "garbage", title="AI page 0", times=100)
    cfg = wiki_cfg(wiki, topics=["artificial intelligence"], max_failure_fraction=0.5)
    _, summary, _ = collect(wiki, cfg)
    assert summary.failures[0].title == "AI page 0"
    assert "InvalidJson" in summary.failures[0].error


def test_api_outage_during_search_is_transient_and_resumes(wiki, tmp_path):
    populate(wiki)
    wiki.fail("search", "503", times=100)
    progress = ProgressLog(tmp_path / "work")
    cfg = wiki_cfg(wiki)
    with pytest.raises(TransientSourceError, match="unavailable"):
        collect(wiki, cfg, progress)
    wiki.faults.clear()
    documents, _, _ = collect(wiki, cfg, progress)
    assert len(documents) == len(wiki.pages)


def test_concurrent_downloads_give_the_same_documents(wiki):
    populate(wiki)
    serial, _, _ = collect(wiki, wiki_cfg(wiki))
    parallel, _, _ = collect(wiki, wiki_cfg(wiki, concurrency=3))
    assert [(d.title, d.text) for d in serial] == [(d.title, d.text) for d in parallel]


def test_user_agent_is_required_with_a_contact(wiki, tmp_path):
    cfg = CollectConfig(wikipedia=wiki_cfg(wiki))
    with pytest.raises(ConfigError, match=r"collect\.user_agent"):
        run_collect(cfg, tmp_path)
    with pytest.raises(ConfigError, match="contact"):
        run_collect(cfg.model_copy(update={"user_agent": "my-bot"}), tmp_path)
    assert wiki.requests == []  # refused before any request


def test_empty_topic_list_is_a_clear_config_error():
    with pytest.raises(ValidationError, match="topics is empty"):
        WikipediaConfig(topics=[" ", ""])
    assert WikipediaConfig(topics=[], enabled=False).topics == []


def run(wiki: FakeMediaWiki, root, **kw):
    cfg = CollectConfig(user_agent=AGENT, wikipedia=wiki_cfg(wiki, **kw))
    return run_collect(cfg, root, sleep=lambda _s: None)


def test_scheduled_rerun_fetches_only_changed_pages(wiki, tmp_path):
    populate(wiki)
    first = run(wiki, tmp_path)
    assert wiki.count("extracts") == len(wiki.pages)

    wiki.requests.clear()
    wiki.edit("AI page 3", article("AI page 3", seed=1))
    wiki.add("ML page new", article("ML page new"), topics=("machine learning",))
    second = run(wiki, tmp_path)
    assert wiki.count("extracts") == 2
    assert {r["titles"] for r in wiki.requests if "extracts" in r.get("prop", "")} == {
        "AI page 3",
        "ML page new",
    }
    assert wiki.count("info") == 1  # revision ids of all 15 titles in one batched request
    assert second.fingerprint != first.fingerprint
    docs = {d.title: d for path in second.shard_paths(DOCUMENTS_TABLE) for d in read_documents(path)}
    assert "revision 1" in docs["AI page 3"].text
    assert docs["AI page 3"].revision_id == wiki.pages["AI page 3"].revid
    assert second.stats["reused"] == len(wiki.pages) - 2
    assert json.loads(second.file("summary.json").read_text())["previous"] == first.fingerprint

    wiki.requests.clear()
    third = run(wiki, tmp_path)
    assert wiki.count("extracts") == 0
    assert third.fingerprint == second.fingerprint  # nothing changed: downstream stays cached


def test_interrupted_collection_resumes_without_repeating_requests(wiki, tmp_path, monkeypatch):
    populate(wiki)
    real_fetch = MediaWikiClient.fetch
    calls = {"n": 0}

    def crashing_fetch(self, title):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("worker killed")
        return real_fetch(self, title)

    monkeypatch.setattr(MediaWikiClient, "fetch", crashing_fetch)
    with pytest.raises(KeyboardInterrupt):
        run(wiki, tmp_path)
    assert wiki.count("extracts") == 5

    monkeypatch.setattr(MediaWikiClient, "fetch", real_fetch)
    wiki.requests.clear()
    artifact = run(wiki, tmp_path)
    assert wiki.count("search") == 0 and wiki.count("info") == 0  # resumed from saved progress
    assert wiki.count("extracts") == len(wiki.pages) - 5
    assert artifact.stats["documents"] == len(wiki.pages)
    assert not list((tmp_path / "collect").glob(".work-*"))  # the work folder goes once published
