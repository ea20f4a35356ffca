"""Wikipedia articles, collected politely and incrementally (the API client is `tasks.sources.mediawiki`).

A collection runs in four steps, each saved to the progress log as it goes, so a second attempt after
an interruption repeats none of the finished requests:

1. search every topic (titles are deduplicated across topics; the first topic that found a title
   names it);
2. check the current revision of every title in batches (missing and disambiguation pages are skipped
   and counted);
3. plan: an article whose revision equals that of the last artifact (or of a page an interrupted
   attempt already fetched) is reused, the others are fetched, so a scheduled rebuild downloads only
   what changed;
4. fetch the planned articles, one request each, with bounded concurrency. A page that still fails
   after retries is listed in the summary and its previous version kept when there is one; past
   `max_failure_fraction` lost articles the phase fails, to be retried.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from tasks.redact import redact_url
from tasks.sources.base import Failure, SourceContext, SourceSummary
from tasks.sources.document import Document, make_doc_id
from tasks.sources.errors import TooManyFailuresError, TransientSourceError
from tasks.sources.mediawiki import (
    MAX_SEARCH_LIMIT,
    MAX_TITLES_PER_QUERY,
    FetchedPage,
    MediaWikiClient,
    PageState,
    describe,
    is_transient,
)
from tasks.sources.progress import ProgressLog
from tasks.sources.retry import RetryConfig
from tasks.sources.sink import DocumentSink
from tasks.sources.useragent import require_user_agent
from tinyllama_model.config_fields import operational

SOURCE = "wikipedia"
DEFAULT_TOPICS = [
    "artificial intelligence",
    "machine learning",
    "deep learning",
    "neural networks",
    "natural language processing",
]


# The shape of a Wikipedia edition's subdomain: lower-case letters, then dash-separated parts
# (`en`, `simple`, `zh-min-nan`, `be-tarask`).
LANGUAGE_CODE = re.compile(r"[a-z]{2,12}(-[a-z0-9]{1,12}){0,3}")


class WikipediaConfig(BaseModel):
    """Wikipedia articles found by full-text search for each topic."""

    enabled: bool = Field(True, description="Collect Wikipedia articles (turn off for offline builds).")
    topics: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TOPICS),
        description="Search queries; each contributes up to `articles_per_topic` articles.",
    )
    articles_per_topic: int = Field(
        2000,
        ge=1,
        le=10_000,
        description="Most search results taken per topic (the API caps offsets at 10,000).",
    )
    language: str = Field("en", description="Wikipedia language edition, e.g. 'en', 'de'.")
    api_url: str | None = Field(
        None, description="MediaWiki API endpoint; empty means https://<language>.wikipedia.org/w/api.php."
    )
    concurrency: int = Field(
        1,
        ge=1,
        le=4,
        description="Parallel article downloads. Wikimedia asks for requests in series: keep 1.",
        json_schema_extra=operational(),
    )
    maxlag: int | None = Field(
        5,
        ge=0,
        description="maxlag parameter: the API refuses (and we wait) while replicas lag this many s.",
        json_schema_extra=operational(),
    )
    timeout_s: float = Field(
        30.0, gt=0, description="Timeout of one HTTP request, in seconds.", json_schema_extra=operational()
    )
    search_batch: int = Field(
        MAX_SEARCH_LIMIT,
        ge=1,
        le=MAX_SEARCH_LIMIT,
        description="Search results per request (srlimit).",
        json_schema_extra=operational(),
    )
    titles_per_query: int = Field(
        MAX_TITLES_PER_QUERY,
        ge=1,
        le=MAX_TITLES_PER_QUERY,
        description="Titles per revision-id query.",
        json_schema_extra=operational(),
    )
    max_failure_fraction: float = Field(
        0.02,
        ge=0,
        le=1,
        description="The phase fails (to be retried) when more than this fraction of articles could not be "
        "fetched; below it, failures are listed in the summary.",
        json_schema_extra=operational(),
    )
    retry: RetryConfig = Field(
        default_factory=RetryConfig,
        description="Backoff for transient HTTP faults.",
        json_schema_extra=operational(),
    )

    @field_validator("language")
    @classmethod
    def _language_code(cls, language: str) -> str:
        """The code becomes the endpoint's host name: anything but a language code could name another host."""
        if not LANGUAGE_CODE.fullmatch(language):
            raise ValueError(
                f"collect.wikipedia.language {language!r} is not a Wikipedia language code: write the "
                "subdomain of the edition, e.g. 'en', 'de', 'simple', 'zh-min-nan' (set collect.wikipedia."
                "api_url for any other MediaWiki)"
            )
        return language

    @model_validator(mode="after")
    def _topics_given(self) -> WikipediaConfig:
        self.topics = [t.strip() for t in self.topics if t.strip()]
        if self.enabled and not self.topics:
            raise ValueError(
                "collect.wikipedia.topics is empty: list at least one search topic, "
                "or set collect.wikipedia.enabled=false"
            )
        return self

    @property
    def endpoint(self) -> str:
        return self.api_url or f"https://{self.language}.wikipedia.org/w/api.php"


@dataclass(frozen=True)
class WikipediaFailure(Failure):
    kept_previous: bool  # the last artifact's version of the article stands in for it


@dataclass
class WikipediaSummary(SourceSummary):
    """Counts filled in as the collection goes (every title found ends in exactly one of them)."""

    titles_found: int = 0
    per_topic: dict[str, int] = field(default_factory=dict)
    skipped_missing: int = 0
    skipped_disambiguation: int = 0
    reused: int = 0  # unchanged since the last artifact
    resumed: int = 0  # fetched by an interrupted earlier attempt
    fetched: int = 0
    failures: list[WikipediaFailure] = field(default_factory=list)
    retries: int = 0

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def lost(self) -> int:
        """Articles that failed with no previous version to keep."""
        return sum(1 for f in self.failures if not f.kept_previous)

    def as_dict(self) -> dict[str, Any]:
        """The fields, with `failed` and `lost` after the failures (summary.json's order since v1)."""
        fields = dataclasses.asdict(self)
        retries = fields.pop("retries")
        return {**fields, "failed": self.failed, "lost": self.lost, "retries": retries}

    def skip(self, page: FetchedPage) -> None:
        """A fetched page that turned out empty, missing or a disambiguation page (edited meanwhile)."""
        if page.disambiguation:
            self.skipped_disambiguation += 1
        else:
            self.skipped_missing += 1


@dataclass
class _Plan:
    """The articles planned, those already in hand (by doc id: the topic to give them), and those to fetch.

    Only ids and revisions are held: the documents themselves stream from the last artifact's shards
    and the progress log when they are written out.
    """

    articles: int = 0
    reuse: dict[str, str | None] = field(default_factory=dict)  # from the last artifact; None: its topic
    resume: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # from the progress log
    to_fetch: list[PageState] = field(default_factory=list)


class WikipediaSource:
    """Articles found by searching each topic; see the module docstring for the four steps."""

    name = SOURCE
    remote = True

    def __init__(
        self, cfg: WikipediaConfig, user_agent: str | None, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.cfg = cfg
        self.user_agent = require_user_agent(user_agent, "collect.wikipedia")
        self.sleep = sleep

    def _client(self) -> MediaWikiClient:
        cfg = self.cfg
        return MediaWikiClient(
            cfg.endpoint,
            self.user_agent,
            language=cfg.language,
            maxlag=cfg.maxlag,
            timeout_s=cfg.timeout_s,
            retry=cfg.retry,
            search_batch=cfg.search_batch,
            sleep=self.sleep,
        )

    def collect(self, ctx: SourceContext, out: DocumentSink) -> WikipediaSummary:
        """Fetched articles first, as they come, then those reused from the last artifact, then those an
        interrupted attempt fetched."""
        previous = ctx.previous.revisions(SOURCE)
        client = self._client()
        summary = WikipediaSummary()
        write = partial(_write, out, summary)
        try:
            topic_of, states = self._discover(client, ctx)
            summary.titles_found = len(topic_of)
            plan = self._plan(states, topic_of, previous, _resumed(ctx.progress), summary)
            ctx.log(
                f"wikipedia: {plan.articles} articles, {len(plan.to_fetch)} to fetch, "
                f"{len(plan.reuse) + len(plan.resume)} unchanged"
            )
            self._fetch(client, plan, topic_of, previous, ctx, summary, write)
            summary.retries = client.retry.retried
        finally:
            client.close()
        self._check_losses(summary, plan.articles)
        for doc in ctx.previous.documents(SOURCE, plan.reuse):
            topic = plan.reuse[doc.doc_id]
            write(dataclasses.replace(doc, topic=topic) if topic is not None else doc)
        _write_resumed(ctx.progress, plan.resume, write)
        return summary

    def _discover(
        self, client: MediaWikiClient, ctx: SourceContext
    ) -> tuple[dict[str, str], list[PageState]]:
        """Steps 1 and 2: title -> topic, and the state of every title; an unreachable API is transient."""
        try:
            topic_of = _search_all(self.cfg, client, ctx.progress, ctx.log)
            return topic_of, _check_revisions(self.cfg, client, ctx.progress, list(topic_of), ctx.log)
        except Exception as err:
            if is_transient(err):
                raise TransientSourceError(
                    f"Wikipedia API unavailable at {redact_url(self.cfg.endpoint)}: {describe(err)}"
                ) from err
            raise

    @staticmethod
    def _plan(
        states: list[PageState],
        topic_of: dict[str, str],
        previous: dict[str, int | None],
        resumed: dict[str, int | None],
        summary: WikipediaSummary,
    ) -> _Plan:
        """Step 3: skip missing and disambiguation pages, reuse current revisions, fetch the rest."""
        plan = _Plan()
        seen: set[str] = set()
        for state in states:
            if state.title in seen:  # two search hits redirecting to one article
                continue
            seen.add(state.title)
            if state.missing:
                summary.skipped_missing += 1
                continue
            if state.disambiguation:
                summary.skipped_disambiguation += 1
                continue
            doc_id = make_doc_id(SOURCE, state.title)
            plan.articles += 1
            topic = topic_of[state.requested]
            if _is_current(previous, doc_id, state):
                summary.reused += 1
                plan.reuse[doc_id] = topic
            elif _is_current(resumed, doc_id, state):
                summary.resumed += 1
                plan.resume[doc_id] = (topic, state.revision_id)
            else:
                plan.to_fetch.append(state)
        return plan

    def _fetch(
        self,
        client: MediaWikiClient,
        plan: _Plan,
        topic_of: dict[str, str],
        previous: dict[str, int | None],
        ctx: SourceContext,
        summary: WikipediaSummary,
        write: Callable[[Document], None],
    ) -> None:
        """Step 4: fetch what the plan lists; a failure keeps the previous version when there is one."""
        planned = len(plan.to_fetch)
        ctx.pages(SOURCE, 0, planned)
        for done, (state, outcome) in enumerate(_fetch_all(self.cfg, client, plan.to_fetch), 1):
            doc_id = make_doc_id(SOURCE, state.title)
            if isinstance(outcome, BaseException):
                kept = doc_id in previous
                if kept:
                    plan.reuse[doc_id] = None
                summary.failures.append(WikipediaFailure(state.title, describe(outcome), kept))
            elif outcome.missing or outcome.disambiguation or not outcome.text.strip():
                summary.skip(outcome)
                plan.articles -= 1
            else:
                doc = _article(doc_id, state, outcome, topic_of[state.requested])
                ctx.progress.append("pages", doc.to_record())
                write(doc)
                summary.fetched += 1
            ctx.pages(SOURCE, done, planned)

    def _check_losses(self, summary: WikipediaSummary, wanted: int) -> None:
        """Fail (to be retried) when more than `max_failure_fraction` of the articles were lost."""
        if summary.lost / max(wanted, 1) <= self.cfg.max_failure_fraction:
            return
        listed = "; ".join(f"{f.title}: {f.error}" for f in summary.failures[:5])
        raise TooManyFailuresError(
            f"{summary.lost} of {wanted} Wikipedia articles could not be fetched "
            f"(more than collect.wikipedia.max_failure_fraction={self.cfg.max_failure_fraction}). "
            f"The {summary.fetched + summary.resumed} fetched so far are saved and a re-run resumes. "
            f"First failures: {listed}"
        )


def _write(out: DocumentSink, summary: WikipediaSummary, doc: Document) -> None:
    out.write(doc)
    topic = doc.topic or ""
    summary.per_topic[topic] = summary.per_topic.get(topic, 0) + 1


def _resumed(progress: ProgressLog) -> dict[str, int | None]:
    """doc_id -> revision of the pages an interrupted earlier attempt fetched (the last record wins)."""
    return {r["doc_id"]: r.get("revision_id") for r in progress.iter("pages") if r.get("source") == SOURCE}


def _write_resumed(
    progress: ProgressLog, resume: dict[str, tuple[str, int | None]], write: Callable[[Document], None]
) -> None:
    """The planned pages of the progress log, each once, read from the log as they are written."""
    written: set[str] = set()
    for record in progress.iter("pages"):
        doc_id = record.get("doc_id")
        if doc_id in resume and doc_id not in written and record.get("revision_id") == resume[doc_id][1]:
            written.add(doc_id)
            write(dataclasses.replace(Document.from_record(record), topic=resume[doc_id][0]))


def _is_current(revisions: dict[str, int | None], doc_id: str, state: PageState) -> bool:
    """Whether the revision held for `doc_id` is the article's current one."""
    return state.revision_id is not None and doc_id in revisions and revisions[doc_id] == state.revision_id


def _article(doc_id: str, state: PageState, page: FetchedPage, topic: str) -> Document:
    return Document(
        doc_id=doc_id,
        source=SOURCE,
        title=state.title,
        text=page.text,
        url=page.url or state.url,
        topic=topic,
        revision_id=page.revision_id if page.revision_id is not None else state.revision_id,
        fetched_at=datetime.now(timezone.utc),
    )


def _search_all(
    cfg: WikipediaConfig, client: MediaWikiClient, progress: ProgressLog, log: Callable[[str], None]
) -> dict[str, str]:
    """title -> the first topic whose search found it (search order kept)."""
    done = {(r["topic"], r["limit"]): r["titles"] for r in progress.read("search")}
    topic_of: dict[str, str] = {}
    for topic in cfg.topics:
        titles = done.get((topic, cfg.articles_per_topic))
        if titles is None:
            titles = client.search(topic, cfg.articles_per_topic)
            progress.append("search", {"topic": topic, "limit": cfg.articles_per_topic, "titles": titles})
            log(f"wikipedia: search {topic!r} -> {len(titles)} titles")
        for title in titles:
            topic_of.setdefault(title, topic)
    return topic_of


def _check_revisions(
    cfg: WikipediaConfig,
    client: MediaWikiClient,
    progress: ProgressLog,
    titles: list[str],
    log: Callable[[str], None],
) -> list[PageState]:
    known = {r["requested"]: PageState(**r) for r in progress.read("states")}
    pending = [t for t in titles if t not in known]
    for batch in _batches(pending, cfg.titles_per_query):
        for state in client.page_states(batch):
            known[state.requested] = state
            progress.append("states", state.__dict__)
    if pending:
        log(f"wikipedia: revision ids of {len(pending)} titles checked")
    return [known[t] for t in titles]


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _try_fetch(client: MediaWikiClient, state: PageState) -> FetchedPage | BaseException:
    try:
        return client.fetch(state.title)
    except Exception as err:
        return err


def _fetch_all(
    cfg: WikipediaConfig, client: MediaWikiClient, states: list[PageState]
) -> Iterator[tuple[PageState, FetchedPage | BaseException]]:
    """Yield (state, page or the error that outlived its retries), in order; bounded concurrency."""
    fetch = partial(_try_fetch, client)
    if cfg.concurrency == 1:
        for state in states:
            yield state, fetch(state)
        return
    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        yield from zip(states, pool.map(fetch, states), strict=True)
