"""Wikipedia articles through the MediaWiki Action API, fetched politely and incrementally.

Three kinds of request, each as batched as the API allows:

1. `list=search` per topic, up to 500 titles a request, following `continue` until the per-topic
   limit (titles are deduplicated across topics; the first topic that found a title names it);
2. `prop=info|pageprops` for 50 titles a request: the current revision id of every page, whether it is
   missing or a disambiguation page (both skipped and counted);
3. `prop=extracts|info|pageprops` with `explaintext` for ONE title a request: TextExtracts lowers
   `exlimit` to 1 for whole-article extracts (only `exintro` extracts batch), so this is the only
   per-page request, and a scheduled rebuild makes it only for pages whose revision changed.

The transport is wikipedia-api's `Wikipedia` client (its httpx session, User-Agent header, JSON and
typed HTTP errors), pointed at a configurable endpoint and with its own retries off: its page objects
fetch one page and one property per request and its `search()` does not follow continuation, so the
batching above and the retry policy (`tasks.sources.retry`: jitter, Retry-After, maxlag) live here.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx
import wikipediaapi
from pydantic import BaseModel, Field, model_validator

from tasks.sources.document import Document, make_doc_id
from tasks.sources.errors import TooManyFailuresError, TransientSourceError
from tasks.sources.progress import ProgressLog
from tasks.sources.retry import RetryConfig, RetryPolicy
from tinyllama_model.config_fields import operational

SOURCE = "wikipedia"
DEFAULT_TOPICS = [
    "artificial intelligence",
    "machine learning",
    "deep learning",
    "neural networks",
    "natural language processing",
]
# API limits for clients without the bot right (https://www.mediawiki.org/wiki/API:Query).
MAX_SEARCH_LIMIT = 500
MAX_TITLES_PER_QUERY = 50


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


class MediaWikiAPIError(Exception):
    """An error envelope (`{"error": {"code": ...}}`) returned with HTTP 200."""

    # Codes that say "try again later" rather than "your request is wrong".
    TRANSIENT = frozenset({"maxlag", "ratelimited", "readonly", "internal_api_error_DBQueryError"})

    def __init__(self, code: str, info: str) -> None:
        super().__init__(f"MediaWiki API error {code}: {info}")
        self.code = code


def _is_transient(err: BaseException) -> bool:
    if isinstance(err, MediaWikiAPIError):
        return err.code in MediaWikiAPIError.TRANSIENT
    if isinstance(err, wikipediaapi.WikiHttpError) and not isinstance(err, wikipediaapi.WikiRateLimitError):
        return err.status_code >= 500
    # 429, timeouts, refused/reset connections and torn (truncated) JSON bodies.
    return isinstance(
        err,
        (
            wikipediaapi.WikiRateLimitError,
            wikipediaapi.WikiHttpTimeoutError,
            wikipediaapi.WikiConnectionError,
            wikipediaapi.WikiInvalidJsonError,
            httpx.TransportError,
        ),
    )


def _retry_after(err: BaseException) -> float | None:
    if isinstance(err, wikipediaapi.WikiRateLimitError) and err.retry_after is not None:
        return float(err.retry_after)
    return None


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


class _Transport(wikipediaapi.Wikipedia):
    """wikipedia-api's client with a configurable endpoint and the API error envelope checked."""

    def __init__(self, api_url: str, **kwargs: Any) -> None:
        self._api_url = api_url
        super().__init__(**kwargs)

    def _build_url(self, language: str) -> str:  # type: ignore[override]
        return self._api_url

    def query(self, params: dict[str, Any]) -> dict[str, Any]:
        full = self._construct_params_standalone({"action": "query", "formatversion": 2, **params})
        raw = self._get(self.language, full)
        if not isinstance(raw, dict):
            raise wikipediaapi.WikiInvalidJsonError(self._api_url)
        if "error" in raw:
            error = raw["error"] if isinstance(raw["error"], dict) else {}
            raise MediaWikiAPIError(str(error.get("code", "unknown")), str(error.get("info", "")))
        return raw


@dataclass
class PageState:
    """What the API says about a title now: which page it resolves to and its current revision."""

    requested: str
    title: str
    revision_id: int | None = None
    url: str | None = None
    missing: bool = False
    disambiguation: bool = False


@dataclass
class FetchedPage:
    title: str
    text: str
    revision_id: int | None
    url: str | None
    missing: bool = False
    disambiguation: bool = False


class MediaWikiClient:
    """The three batched queries of this module, each retried under one policy."""

    def __init__(
        self, cfg: WikipediaConfig, user_agent: str, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.cfg = cfg
        extra = {"maxlag": cfg.maxlag} if cfg.maxlag is not None else None
        self.transport = _Transport(
            cfg.endpoint,
            user_agent=user_agent,
            language=cfg.language,
            extract_format=wikipediaapi.ExtractFormat.WIKI,
            extra_api_params=extra,
            max_retries=0,  # retries are ours (jitter, maxlag, failure accounting)
            timeout=cfg.timeout_s,
        )
        self.retry = RetryPolicy(cfg.retry, sleep=sleep)

    def close(self) -> None:
        self.transport._client.close()  # wikipedia-api keeps its httpx.Client here and offers no close()

    def query(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.retry.call(
            lambda: self.transport.query(params), is_transient=_is_transient, retry_after=_retry_after
        )

    def search(self, topic: str, limit: int) -> list[str]:
        """Titles of up to `limit` articles matching `topic`, following `continue` across requests."""
        titles: list[str] = []
        params: dict[str, Any] = {
            "list": "search",
            "srsearch": topic,
            "srnamespace": 0,
            "srprop": "",
            "srinfo": "",
        }
        cont: dict[str, Any] = {}
        while len(titles) < limit:
            batch = min(self.cfg.search_batch, limit - len(titles))
            raw = self.query({**params, **cont, "srlimit": batch})
            hits = raw.get("query", {}).get("search", [])
            titles.extend(hit["title"] for hit in hits if "title" in hit)
            cont = raw.get("continue") or {}
            if not cont or not hits:
                break
        return titles[:limit]

    def page_states(self, titles: list[str]) -> list[PageState]:
        """Current revision, redirect target, missing/disambiguation flags for up to 50 titles."""
        raw = self.query(
            {
                "prop": "info|pageprops",
                "titles": "|".join(titles),
                "inprop": "url",
                "ppprop": "disambiguation",
            }
        )
        q = raw.get("query", {})
        renamed = {n["from"]: n["to"] for n in q.get("normalized", [])}
        redirected = {r["from"]: r["to"] for r in q.get("redirects", [])}
        pages = {p.get("title"): p for p in q.get("pages", [])}
        states = []
        for requested in titles:
            final = renamed.get(requested, requested)
            final = redirected.get(final, final)
            page = pages.get(final)
            if page is None or page.get("missing") or page.get("invalid"):
                states.append(PageState(requested, final, missing=True))
                continue
            states.append(
                PageState(
                    requested,
                    final,
                    revision_id=page.get("lastrevid"),
                    url=page.get("fullurl"),
                    disambiguation="disambiguation" in (page.get("pageprops") or {}),
                )
            )
        return states

    def fetch(self, title: str) -> FetchedPage:
        """One article as plain text with its section headings as paragraphs, and the revision it is."""
        raw = self.query(
            {
                "prop": "extracts|info|pageprops",
                "titles": title,
                "explaintext": 1,
                "exsectionformat": "wiki",
                "inprop": "url",
                "ppprop": "disambiguation",
            }
        )
        pages = raw.get("query", {}).get("pages", [])
        if not pages or pages[0].get("missing") or pages[0].get("invalid"):
            return FetchedPage(title, "", None, None, missing=True)
        page = pages[0]
        return FetchedPage(
            title=page.get("title", title),
            text=extract_to_text(page.get("extract") or ""),
            revision_id=page.get("lastrevid"),
            url=page.get("fullurl"),
            disambiguation="disambiguation" in (page.get("pageprops") or {}),
        )


_HEADING = re.compile(r"^(={2,6})\s*(.*?)\s*\1$")


def extract_to_text(extract: str) -> str:
    """Plain-text extract -> paragraphs separated by blank lines, each heading a paragraph of its own."""
    paragraphs = []
    for line in extract.splitlines():
        line = line.strip()
        if not line:
            continue
        heading = _HEADING.match(line)
        paragraphs.append(heading.group(2) if heading else line)
    return "\n\n".join(p for p in paragraphs if p)


@dataclass
class WikipediaResult:
    documents: list[Document]
    summary: dict[str, Any] = field(default_factory=dict)


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def collect_wikipedia(
    cfg: WikipediaConfig,
    client: MediaWikiClient,
    progress: ProgressLog,
    previous: dict[str, Document] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> WikipediaResult:
    """Search, check revisions, fetch what changed; reuse `previous` documents whose revision is current.

    Search results, revision checks and fetched pages are appended to `progress` as they arrive, so a
    second call after an interruption repeats none of the finished requests. A page that still fails
    after retries is listed in the summary; when a previous version of it exists that version is kept.
    """
    previous = previous or {}
    try:
        topic_of = _search_all(cfg, client, progress, log)
        states = _check_revisions(cfg, client, progress, list(topic_of), log)
    except Exception as err:
        if _is_transient(err):
            raise TransientSourceError(
                f"Wikipedia API unavailable at {cfg.endpoint}: {_describe(err)}"
            ) from err
        raise

    resumed = {
        d.doc_id: d for d in (Document.from_record(r) for r in progress.read("pages")) if d.source == SOURCE
    }
    summary: dict[str, Any] = {
        "titles_found": len(topic_of),
        "per_topic": {},
        "skipped_missing": 0,
        "skipped_disambiguation": 0,
        "reused": 0,
        "resumed": 0,
        "fetched": 0,
        "failures": [],
    }
    docs: dict[str, Document] = {}  # doc_id -> document, in search order
    order: list[str] = []
    to_fetch: list[PageState] = []
    seen: set[str] = set()
    for state in states:
        if state.title in seen:  # two search hits redirecting to one article
            continue
        seen.add(state.title)
        if state.missing:
            summary["skipped_missing"] += 1
            continue
        if state.disambiguation:
            summary["skipped_disambiguation"] += 1
            continue
        doc_id = make_doc_id(SOURCE, state.title)
        order.append(doc_id)
        topic = topic_of[state.requested]
        for pool, counter in ((previous, "reused"), (resumed, "resumed")):
            old = pool.get(doc_id)
            if old is not None and state.revision_id is not None and old.revision_id == state.revision_id:
                docs[doc_id] = dataclasses.replace(old, topic=topic)
                summary[counter] += 1
                break
        else:
            to_fetch.append(state)

    log(f"wikipedia: {len(order)} articles, {len(to_fetch)} to fetch, {len(docs)} unchanged")
    for state, outcome in _fetch_all(cfg, client, to_fetch):
        doc_id = make_doc_id(SOURCE, state.title)
        if isinstance(outcome, BaseException):
            kept = previous.get(doc_id)
            if kept is not None:
                docs[doc_id] = kept
            summary["failures"].append(
                {"title": state.title, "error": _describe(outcome), "kept_previous": kept is not None}
            )
            continue
        if outcome.missing or outcome.disambiguation or not outcome.text.strip():
            key = "skipped_disambiguation" if outcome.disambiguation else "skipped_missing"
            summary[key] += 1
            order.remove(doc_id)
            continue
        doc = Document(
            doc_id=doc_id,
            source=SOURCE,
            title=state.title,
            text=outcome.text,
            url=outcome.url or state.url,
            topic=topic_of[state.requested],
            revision_id=outcome.revision_id if outcome.revision_id is not None else state.revision_id,
            fetched_at=datetime.now(timezone.utc),
        )
        progress.append("pages", doc.to_record())
        docs[doc_id] = doc
        summary["fetched"] += 1

    documents = [docs[i] for i in order if i in docs]
    for doc in documents:
        summary["per_topic"][doc.topic] = summary["per_topic"].get(doc.topic, 0) + 1
    lost = sum(1 for f in summary["failures"] if not f["kept_previous"])
    summary["failed"] = len(summary["failures"])
    summary["lost"] = lost
    summary["retries"] = client.retry.retried
    wanted = max(len(order), 1)
    if lost / wanted > cfg.max_failure_fraction:
        listed = "; ".join(f"{f['title']}: {f['error']}" for f in summary["failures"][:5])
        raise TooManyFailuresError(
            f"{lost} of {len(order)} Wikipedia articles could not be fetched "
            f"(more than collect.wikipedia.max_failure_fraction={cfg.max_failure_fraction}). "
            f"The {summary['fetched'] + summary['resumed']} fetched so far are saved and a re-run resumes. "
            f"First failures: {listed}"
        )
    return WikipediaResult(documents, summary)


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


def _fetch_all(
    cfg: WikipediaConfig, client: MediaWikiClient, states: list[PageState]
) -> Iterator[tuple[PageState, FetchedPage | BaseException]]:
    """Yield (state, page or the error that outlived its retries), in order; bounded concurrency."""

    def one(state: PageState) -> FetchedPage | BaseException:
        try:
            return client.fetch(state.title)
        except Exception as err:
            return err

    if cfg.concurrency == 1:
        for state in states:
            yield state, one(state)
        return
    with ThreadPoolExecutor(max_workers=cfg.concurrency) as pool:
        yield from zip(states, pool.map(one, states), strict=True)
