"""Web pages through httpx + selectolax, fetched like a polite crawler.

Per URL: http/https only; robots.txt of every host on the way is obeyed (with its Crawl-delay);
redirects are followed by hand (each hop re-checked, loops and chains longer than `max_redirects`
refused); one host is not asked twice within `per_host_delay_s`; the body is streamed and reading
stops past `max_bytes`; only HTML and plain text are read. 429, 5xx, timeouts and connection errors
are retried with backoff (Retry-After honoured); anything else is a rejection with its reason.
"""

from __future__ import annotations

import email.utils
import time
import urllib.robotparser
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import BaseModel, Field

from tasks.sources.base import Failure, SourceContext, SourceSummary
from tasks.sources.document import Document, make_doc_id
from tasks.sources.htmltext import HTMLBombError, html_to_text
from tasks.sources.retry import RetryConfig, RetryPolicy
from tasks.sources.useragent import require_user_agent
from tinyllama_model.config_fields import operational

SOURCE = "web"
HTML_TYPES = ("text/html", "application/xhtml+xml")


class WebConfig(BaseModel):
    """Individual web pages (no crawling beyond redirects)."""

    urls: list[str] = Field(
        default_factory=list, description="Pages to fetch; empty turns the web source off."
    )
    topic: str | None = Field(None, description="Topic recorded on every web document.")
    timeout_s: float = Field(
        20.0, gt=0, description="Timeout of one HTTP request, in seconds.", json_schema_extra=operational()
    )
    max_redirects: int = Field(5, ge=0, le=20, description="Longest redirect chain followed.")
    max_bytes: int = Field(
        5_000_000, ge=1024, description="Largest response body read; bigger pages are refused unread."
    )
    max_html_depth: int = Field(
        2000, ge=10, description="Deepest HTML nesting parsed; deeper pages are refused as HTML bombs."
    )
    per_host_delay_s: float = Field(
        1.0,
        ge=0,
        description="Least time between two requests to one host (robots.txt may ask for more).",
        json_schema_extra=operational(),
    )
    content_types: list[str] = Field(
        default_factory=lambda: [*HTML_TYPES, "text/plain"], description="Media types read; others refused."
    )
    retry: RetryConfig = Field(
        default_factory=RetryConfig,
        description="Backoff for transient HTTP faults.",
        json_schema_extra=operational(),
    )


class Rejected(Exception):
    """A page that will not be collected, and why (not worth retrying)."""


class _Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


@dataclass
class _Body:
    url: str
    content_type: str
    charset: str | None
    data: bytes


@dataclass(frozen=True)
class WebSummary(SourceSummary):
    urls: int
    fetched: int
    resumed: int
    failed: int
    failures: list[Failure]
    retries: int


class WebFetcher:
    """One polite HTTP client: robots.txt per host, per-host spacing, bounded redirects and sizes."""

    def __init__(
        self,
        cfg: WebConfig,
        user_agent: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.user_agent = user_agent
        self.agent_token = user_agent.split("/")[0].split()[0]
        self.client = httpx.Client(
            headers={"User-Agent": user_agent}, timeout=cfg.timeout_s, follow_redirects=False
        )
        self.retry = RetryPolicy(cfg.retry, sleep=sleep)
        self.sleep, self.clock = sleep, clock
        self._robots: dict[str, urllib.robotparser.RobotFileParser | None] = {}
        self._last: dict[str, float] = {}

    def close(self) -> None:
        self.client.close()

    # --- politeness ---------------------------------------------------------------------------
    def _wait_turn(self, host: str) -> None:
        delay = self.cfg.per_host_delay_s
        robots = self._robots.get(host)
        if robots is not None and (crawl_delay := robots.crawl_delay(self.agent_token)) is not None:
            delay = max(delay, float(crawl_delay))
        last = self._last.get(host)
        if last is not None and (wait := last + delay - self.clock()) > 0:
            self.sleep(wait)
        self._last[host] = self.clock()

    def allowed(self, url: str) -> bool:
        """robots.txt verdict; 401/403 or an unreachable robots.txt mean no, a missing one means yes."""
        parts = urlsplit(url)
        host = f"{parts.scheme}://{parts.netloc}"
        if host not in self._robots:
            self._robots[host] = self._load_robots(f"{host}/robots.txt")
        robots = self._robots[host]
        return robots is not None and robots.can_fetch(self.agent_token, url)

    def _load_robots(self, robots_url: str) -> urllib.robotparser.RobotFileParser | None:
        parser = urllib.robotparser.RobotFileParser(robots_url)
        try:
            self._wait_turn(urlsplit(robots_url).netloc)
            response = self.retry.call(
                lambda: self._robots_get(robots_url),
                is_transient=lambda e: isinstance(e, (_Transient, httpx.TransportError)),
                retry_after=lambda e: getattr(e, "retry_after", None),
            )
        except (_Transient, httpx.HTTPError):
            return None  # unreachable: assume disallowed, as Google does for a failing robots.txt
        if response.status_code in (401, 403):
            parser.disallow_all = True
        elif response.status_code >= 400:
            parser.allow_all = True
        else:
            parser.parse(response.text[: self.cfg.max_bytes].splitlines())
        return parser

    def _robots_get(self, url: str) -> httpx.Response:
        response = self.client.get(url, follow_redirects=True)
        if response.status_code == 429 or response.status_code >= 500:
            raise _Transient(
                f"HTTP {response.status_code}", _retry_after_seconds(response.headers.get("Retry-After"))
            )
        return response

    # --- fetching -----------------------------------------------------------------------------
    def _get(self, url: str) -> httpx.Response | _Body:
        """One GET: a redirect response (unread) or the body, read up to max_bytes."""
        self._wait_turn(urlsplit(url).netloc)
        with self.client.stream("GET", url) as response:
            status = response.status_code
            if status == 429 or status >= 500:
                raise _Transient(f"HTTP {status}", _retry_after_seconds(response.headers.get("Retry-After")))
            if 300 <= status < 400 and "location" in response.headers:
                return response
            if status != 200:
                raise Rejected(f"HTTP {status}")
            media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type not in self.cfg.content_types:
                raise Rejected(f"content type {media_type or 'missing'!r} is not HTML or plain text")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.cfg.max_bytes:
                raise Rejected(f"response of {declared} bytes is over max_bytes={self.cfg.max_bytes}")
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.cfg.max_bytes:
                    raise Rejected(f"response is over max_bytes={self.cfg.max_bytes}; stopped reading")
                chunks.append(chunk)
            return _Body(str(response.url), media_type, response.charset_encoding, b"".join(chunks))

    def fetch(self, url: str) -> Document:
        """The page at `url` as a document; raises Rejected (with the reason) or the last transient error."""
        start = url
        visited: set[str] = set()
        for _hop in range(self.cfg.max_redirects + 1):
            if urlsplit(url).scheme not in ("http", "https"):
                raise Rejected(f"unsupported URL scheme in {url!r} (http and https only)")
            if url in visited:
                raise Rejected(f"redirect loop at {url}")
            visited.add(url)
            if not self.allowed(url):
                raise Rejected(f"disallowed by robots.txt: {url}")
            result = self.retry.call(
                lambda u=url: self._get(u),
                is_transient=lambda e: isinstance(e, (_Transient, httpx.TransportError)),
                retry_after=lambda e: getattr(e, "retry_after", None),
            )
            if isinstance(result, _Body):
                return self._document(start, result)
            url = urljoin(url, result.headers["location"])
        raise Rejected(f"more than {self.cfg.max_redirects} redirects (max_redirects)")

    def _document(self, start: str, body: _Body) -> Document:
        text = body.data.decode(body.charset or "utf-8", errors="replace")
        if body.content_type in HTML_TYPES:
            try:
                title, text = html_to_text(text, max_depth=self.cfg.max_html_depth)
            except HTMLBombError as err:
                raise Rejected(str(err)) from err
        else:
            title = ""
        return Document(
            doc_id=make_doc_id(SOURCE, start),
            source=SOURCE,
            title=title or urlsplit(body.url).path.rsplit("/", 1)[-1] or body.url,
            text=text,
            url=body.url,
            topic=self.cfg.topic,
        )


class WebSource:
    """The pages of `collect.web.urls`, each fetched once; a page an interrupted attempt fetched is reused."""

    name = SOURCE
    remote = True

    def __init__(
        self, cfg: WebConfig, user_agent: str | None, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.cfg = cfg
        self.user_agent = require_user_agent(user_agent, "collect.web")
        self.sleep = sleep

    def collect(self, ctx: SourceContext) -> tuple[list[Document], WebSummary]:
        fetcher = WebFetcher(self.cfg, self.user_agent, sleep=self.sleep)
        try:
            return self._collect(fetcher, ctx)
        finally:
            fetcher.close()

    def _collect(self, fetcher: WebFetcher, ctx: SourceContext) -> tuple[list[Document], WebSummary]:
        done = {r["doc_id"]: Document.from_record(r) for r in ctx.progress.read("web")}
        docs: list[Document] = []
        failures: list[Failure] = []
        resumed = 0
        for url in dict.fromkeys(self.cfg.urls):
            doc_id = make_doc_id(SOURCE, url)
            if doc_id in done:
                docs.append(done[doc_id])
                resumed += 1
                continue
            doc = _fetch(fetcher, url, failures, ctx.log)
            if doc is not None:
                ctx.progress.append("web", doc.to_record())
                docs.append(doc)
        summary = WebSummary(
            urls=len(self.cfg.urls),
            fetched=len(docs) - resumed,
            resumed=resumed,
            failed=len(failures),
            failures=failures,
            retries=fetcher.retry.retried,
        )
        return docs, summary


def _fetch(
    fetcher: WebFetcher, url: str, failures: list[Failure], log: Callable[[str], None]
) -> Document | None:
    """The page as a document, or None with the reason added to `failures`."""
    try:
        doc = fetcher.fetch(url)
    except Rejected as err:
        failures.append(Failure(url, str(err)))
        log(f"web: rejected {url}: {err}")
        return None
    except (_Transient, httpx.HTTPError) as err:
        failures.append(Failure(url, f"gave up after retries: {type(err).__name__}: {err}"))
        log(f"web: failed {url}: {err}")
        return None
    if not doc.text.strip():
        failures.append(Failure(url, "no text in page"))
        return None
    return doc
