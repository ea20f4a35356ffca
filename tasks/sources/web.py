"""Web pages through httpx + selectolax, fetched like a polite and wary crawler.

Per URL: http/https only; every hop (the URL and each redirect, robots.txt's included) is checked
after DNS resolution and refused unless its address is global or its host:port is in `allow_hosts`,
and the socket connects to the address that was checked (`tasks.sources.addresses`, `.pinned`);
robots.txt of every host on the way is obeyed (with its Crawl-delay) and read up to
`robots_max_bytes`; redirects are followed by hand (loops and chains longer than `max_redirects`
refused); one host is not asked twice within `per_host_delay_s`; a request gets `timeout_s` per read
(name lookup included) and `request_deadline_s` in all, and a URL `url_budget_s` for everything; the
body is streamed, decoded with a bound (`tasks.sources.httpbody`) and reading stops past `max_bytes`;
only HTML and plain text are read. 429, 5xx, timeouts before the body and connection errors are retried
with backoff (Retry-After honoured) while the budget lasts; a body that stalls is not; anything else is a
rejection with its reason, and any error of one page is that page's recorded failure: the phase goes on.
"""

from __future__ import annotations

import time
import urllib.robotparser
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from tasks.redact import redact_url
from tasks.sources.addresses import AddressGuard, BlockedAddress, Resolver, system_resolve
from tasks.sources.base import Failure, SourceContext, SourceSummary
from tasks.sources.document import Document, make_doc_id
from tasks.sources.htmltext import HTMLBombError, html_to_text
from tasks.sources.httpbody import ACCEPT_ENCODING, BodyError, read_limited
from tasks.sources.pinned import PinnedBackend, PinnedTransport
from tasks.sources.retry import RetryPolicy, retry_after_seconds
from tasks.sources.sink import DocumentSink
from tasks.sources.useragent import require_user_agent
from tasks.sources.web_config import HTML_TYPES, WebConfig

SOURCE = "web"
__all__ = ["HTML_TYPES", "Rejected", "WebConfig", "WebFetcher", "WebSource"]


class Rejected(Exception):
    """A page that will not be collected, and why (not worth retrying)."""


class _Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _is_transient(err: BaseException) -> bool:
    return isinstance(err, (_Transient, httpx.TransportError))


def _retry_after(err: BaseException) -> float | None:
    return getattr(err, "retry_after", None)


def _valid_url(url: str | httpx.URL) -> httpx.URL:
    """`url` parsed, if it is an http(s) URL with a host and a valid port; else Rejected."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as err:
        raise Rejected(f"invalid URL {str(url)!r}: {err}") from err
    if parsed.scheme not in ("http", "https"):
        raise Rejected(f"unsupported URL scheme in {str(url)!r} (http and https only)")
    if not parsed.host or (parsed.port is not None and not 0 < parsed.port < 65536):
        raise Rejected(f"invalid URL {str(url)!r}: no host, or a port outside 1-65535")
    return parsed


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
    """One polite, wary HTTP client: checked and pinned hops, robots.txt per host, per-host spacing,
    bounded redirects, sizes and time. `resolve` is the DNS lookup (tests stand in for it)."""

    def __init__(
        self,
        cfg: WebConfig,
        user_agent: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        resolve: Resolver = system_resolve,
    ) -> None:
        self.cfg = cfg
        self.user_agent = user_agent
        self.agent_token = user_agent.split("/")[0].split()[0]
        self.guard = AddressGuard(cfg.allow_hosts, resolve=resolve)
        self.backend = PinnedBackend(self.guard)
        self.transport = PinnedTransport(self.backend)
        self.client = httpx.Client(  # builds the requests (headers, timeouts) that `transport` sends
            headers={"User-Agent": user_agent, "Accept-Encoding": ACCEPT_ENCODING},
            timeout=cfg.timeout_s,
            follow_redirects=False,
            transport=self.transport,
            trust_env=False,
        )
        self.retry = RetryPolicy(cfg.retry, sleep=sleep)
        self.sleep, self.clock = sleep, clock
        self._robots: dict[str, urllib.robotparser.RobotFileParser | None] = {}
        self._robots_error: dict[str, str] = {}
        self._last: dict[str, float] = {}
        self._budget_end: float | None = None  # the current URL's url_budget_s, in `clock` time

    def close(self) -> None:
        self.client.close()

    # --- politeness ---------------------------------------------------------------------------
    def _wait_turn(self, origin: str) -> None:
        """Space requests to one origin by per_host_delay_s, or its robots.txt Crawl-delay (capped)."""
        delay = self.cfg.per_host_delay_s
        robots = self._robots.get(origin)
        if robots is not None and (crawl_delay := robots.crawl_delay(self.agent_token)) is not None:
            delay = max(delay, min(float(crawl_delay), self.cfg.max_crawl_delay_s))
        last = self._last.get(origin)
        if last is not None and (wait := last + delay - self.clock()) > 0:
            self.sleep(wait)
        self._last[origin] = self.clock()

    def allowed(self, url: str) -> bool:
        """robots.txt verdict; 401/403 or an unreachable robots.txt mean no, a missing one means yes."""
        host = _origin(url)
        if host not in self._robots:
            self._robots[host] = self._load_robots(f"{host}/robots.txt")
        robots = self._robots[host]
        return robots is not None and robots.can_fetch(self.agent_token, url)

    def _load_robots(self, robots_url: str) -> urllib.robotparser.RobotFileParser | None:
        parser = urllib.robotparser.RobotFileParser(robots_url)
        try:
            status, lines = self._robots_get(robots_url)
        except (Rejected, _Transient, httpx.HTTPError) as err:
            # unreachable: assume disallowed, as Google does for a failing robots.txt
            self._robots_error[_origin(robots_url)] = f"{type(err).__name__}: {err}"
            return None
        if status in (401, 403):
            parser.disallow_all = True
        elif status >= 400:
            parser.allow_all = True
        else:
            parser.parse(lines)
        return parser

    def _robots_get(self, url: str) -> tuple[int, list[str]]:
        """(status, lines up to robots_max_bytes) of robots.txt, redirects followed and checked by hand."""
        for _hop in range(self.cfg.max_redirects + 1):
            self._check(url)
            result = self.retry.call(
                lambda u=url: self._get(u, robots=True),
                is_transient=_is_transient,
                retry_after=_retry_after,
                time_left=self._time_left,
            )
            if isinstance(result, str):
                url = str(_valid_url(_redirect_target(url, result)))
                continue
            return result
        raise Rejected(f"robots.txt: more than {self.cfg.max_redirects} redirects (max_redirects)")

    # --- time -------------------------------------------------------------------------------
    def _time_left(self) -> float:
        """Seconds left of the current URL's url_budget_s (unbounded outside `fetch`)."""
        return float("inf") if self._budget_end is None else self._budget_end - self.clock()

    def _budget_spent(self, url: str) -> Rejected:
        return Rejected(f"gave up on {url}: url_budget_s={self.cfg.url_budget_s:g} s spent")

    # --- fetching -----------------------------------------------------------------------------
    def _check(self, url: str) -> None:
        """Resolve the hop's host, refuse it unless allowed, pin the address its socket will use."""
        try:
            self.retry.call(lambda: self._resolve(url), is_transient=_is_transient, time_left=self._time_left)
        except BlockedAddress as err:
            raise Rejected(f"refused {url}: {err}") from err

    def _resolve(self, url: str) -> list[str]:
        """The checked addresses; the lookup counts against the request's time like its connect does."""
        left = self._time_left()
        if left <= 0:
            raise self._budget_spent(url)
        try:
            return self.guard.check(url, timeout=min(self.cfg.timeout_s, self.cfg.request_deadline_s, left))
        except (OSError, UnicodeError) as err:  # DNS may recover: retried like a refused connection
            raise _Transient(f"cannot resolve the host of {url}: {err}") from err

    @contextmanager
    def _stream(self, url: str) -> Iterator[httpx.Response]:
        """GET `url` (checked already) within the request deadline; a deadline hit becomes Rejected.

        The request goes to the transport itself: the client would parse a redirect's Location before
        handing back the response, and a broken one must be this page's rejection, not a protocol error.
        """
        self._wait_turn(_origin(url))
        left = self._time_left()
        if left <= 0:
            raise self._budget_spent(url)
        request = self.client.build_request("GET", url)
        with self.backend.deadline(min(self.cfg.request_deadline_s, left)) as deadline:
            try:
                response = self.transport.handle_request(request)
                response.request = request
                try:
                    yield response
                finally:
                    response.close()
            except httpx.TimeoutException as err:
                if deadline.hit and left < self.cfg.request_deadline_s:
                    raise self._budget_spent(url) from err
                if deadline.hit:
                    raise Rejected(
                        f"{url} did not arrive within request_deadline_s={self.cfg.request_deadline_s:g} s; "
                        "stopped reading"
                    ) from err
                raise

    def _get(self, url: str, *, robots: bool = False) -> str | _Body | tuple[int, list[str]]:
        """One GET: a redirect's Location (unread), or the body (a page) or (status, lines) (robots.txt)."""
        with self._stream(url) as response:
            status = response.status_code
            if status == 429 or status >= 500:
                raise _Transient(f"HTTP {status}", retry_after_seconds(response.headers.get("Retry-After")))
            if 300 <= status < 400 and "location" in response.headers:
                return response.headers["location"]
            if robots:
                return status, self._robots_lines(response) if status < 400 else []
            return self._page(response)

    def _robots_lines(self, response: httpx.Response) -> list[str]:
        data, more = self._read(response, self.cfg.robots_max_bytes)
        text = data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")  # RFC 9309's line ends only: splitlines() also breaks at U+2028, U+0085...
        return lines[:-1] if more else lines  # the last line read may be cut off mid-rule

    def _page(self, response: httpx.Response) -> _Body:
        if response.status_code != 200:
            raise Rejected(f"HTTP {response.status_code}")
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in self.cfg.content_types:
            raise Rejected(f"content type {media_type or 'missing'!r} is not HTML or plain text")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.cfg.max_bytes:
            raise Rejected(f"response of {declared} bytes is over max_bytes={self.cfg.max_bytes}")
        data, more = self._read(response, self.cfg.max_bytes)
        if more:
            raise Rejected(f"response is over max_bytes={self.cfg.max_bytes}; stopped reading")
        return _Body(str(response.url), media_type, response.charset_encoding, data)

    def _read(self, response: httpx.Response, limit: int) -> tuple[bytes, bool]:
        """The body up to `limit`; a body that stalls once the response has begun is refused, not retried:
        a server that answers and then stops would only stop again, and each try costs the whole timeout."""
        received = 0

        def counted() -> Iterator[bytes]:
            nonlocal received
            for chunk in response.iter_raw():
                received += len(chunk)
                yield chunk

        try:
            return read_limited(counted(), response.headers.get("content-encoding", ""), limit)
        except BodyError as err:
            raise Rejected(str(err)) from err
        except httpx.TimeoutException as err:
            if self.backend.current.hit:
                raise  # the request's deadline or the URL's budget: `_stream` says which
            raise Rejected(
                f"{response.request.url} stalled after {received} bytes of its body "
                f"(no data for timeout_s={self.cfg.timeout_s:g} s); not retried"
            ) from err

    def fetch(self, url: str) -> Document:
        """The page at `url` as a document; raises Rejected (with the reason) or the last transient error."""
        start = url
        self._budget_end = self.clock() + self.cfg.url_budget_s
        visited: set[str] = set()
        for _hop in range(self.cfg.max_redirects + 1):
            url = str(_valid_url(url))
            if url in visited:
                raise Rejected(f"redirect loop at {url}")
            visited.add(url)
            self._check(url)
            if not self.allowed(url):
                reason = self._robots_error.get(_origin(url))
                raise Rejected(
                    f"disallowed by robots.txt: {url}" + (f" (unreadable: {reason})" if reason else "")
                )
            result = self.retry.call(
                lambda u=url: self._get(u),
                is_transient=_is_transient,
                retry_after=_retry_after,
                time_left=self._time_left,
            )
            if isinstance(result, _Body):
                return self._document(start, result)
            url = _redirect_target(url, result)
        raise Rejected(f"more than {self.cfg.max_redirects} redirects (max_redirects)")

    def _document(self, start: str, body: _Body) -> Document:
        try:
            text = body.data.decode(body.charset or "utf-8", errors="replace")
        except LookupError as err:
            raise Rejected(
                f"unknown charset {body.charset!r} in the Content-Type; cannot decode the page"
            ) from err
        if body.content_type in HTML_TYPES:
            try:
                title, text = html_to_text(text, max_depth=self.cfg.max_html_depth)
            except HTMLBombError as err:
                raise Rejected(str(err)) from err
        else:
            title = ""
        url = redact_url(body.url)  # the documents file is read by people and tools: no credentials in it
        return Document(
            doc_id=make_doc_id(SOURCE, start),
            source=SOURCE,
            title=title or urlsplit(url).path.rsplit("/", 1)[-1] or url,
            text=text,
            url=url,
            topic=self.cfg.topic,
        )


def _origin(url: str) -> str:
    """scheme://host[:port], without userinfo: the one key of robots.txt rules and request spacing."""
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.netloc.decode('ascii')}"


def _redirect_target(url: str, location: str) -> str:
    try:
        return str(httpx.URL(url).join(location))
    except (httpx.InvalidURL, ValueError, TypeError) as err:
        raise Rejected(f"invalid URL in the redirect from {url} to {location!r}: {err}") from err


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

    def collect(self, ctx: SourceContext, out: DocumentSink) -> WebSummary:
        fetcher = WebFetcher(self.cfg, self.user_agent, sleep=self.sleep)
        try:
            return self._collect(fetcher, ctx, out)
        finally:
            fetcher.close()

    def _collect(self, fetcher: WebFetcher, ctx: SourceContext, out: DocumentSink) -> WebSummary:
        done = {r["doc_id"]: Document.from_record(r) for r in ctx.progress.read("web")}
        written = 0
        failures: list[Failure] = []
        resumed = 0
        urls = list(dict.fromkeys(self.cfg.urls))
        for n, url in enumerate(urls, 1):
            doc_id = make_doc_id(SOURCE, url)
            if doc_id in done:
                out.write(done[doc_id])
                written += 1
                resumed += 1
            elif (doc := _fetch(fetcher, url, failures, ctx.log)) is not None:
                ctx.progress.append("web", doc.to_record())
                out.write(doc)
                written += 1
            ctx.pages(SOURCE, n, len(urls))
        summary = WebSummary(
            urls=len(self.cfg.urls),
            fetched=written - resumed,
            resumed=resumed,
            failed=len(failures),
            failures=failures,
            retries=fetcher.retry.retried,
        )
        return summary


def _fetch(
    fetcher: WebFetcher, url: str, failures: list[Failure], log: Callable[[str], None]
) -> Document | None:
    """The page as a document, or None with the reason added to `failures`.

    Whatever goes wrong with one page (a refusal, a server that gave up, a bug its bytes provoke) is
    that page's failure; the other pages are still collected.
    """
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
    except Exception as err:  # one page's error, whatever it is, must not end the phase
        failures.append(Failure(url, f"unexpected error: {type(err).__name__}: {err}"))
        log(f"web: error on {url}: {type(err).__name__}: {err}")
        return None
    if not doc.text.strip():
        failures.append(Failure(url, "no text in page"))
        return None
    return doc
