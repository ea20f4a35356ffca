"""The MediaWiki Action API client: three batched queries, each retried under one policy.

1. `list=search` per topic, up to 500 titles a request, following `continue` until the limit asked for;
2. `prop=info|pageprops` for 50 titles a request: the current revision id of every page, whether it is
   missing or a disambiguation page;
3. `prop=extracts|info|pageprops` with `explaintext` for ONE title a request: TextExtracts lowers
   `exlimit` to 1 for whole-article extracts (only `exintro` extracts batch), so this is the only
   per-page request.

The transport is wikipedia-api's `Wikipedia` client (its httpx session, User-Agent header, JSON and
typed HTTP errors), pointed at a configurable endpoint and with its own retries off: its page objects
fetch one page and one property per request and its `search()` does not follow continuation, so the
batching above and the retry policy (`tasks.sources.retry`: jitter, Retry-After on 429 and 5xx, the
lag of a maxlag error) live here.
This module knows the API, not the collection: what to search, reuse or resume is `tasks.sources.wikipedia`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import wikipediaapi

from tasks.redact import redact_url
from tasks.sources.retry import RetryConfig, RetryPolicy, retry_after_seconds

# API limits for clients without the bot right (https://www.mediawiki.org/wiki/API:Query).
MAX_SEARCH_LIMIT = 500
MAX_TITLES_PER_QUERY = 50


class MediaWikiAPIError(Exception):
    """An error envelope (`{"error": {"code": ...}}`) returned with HTTP 200."""

    # Codes that say "try again later" rather than "your request is wrong".
    TRANSIENT = frozenset({"maxlag", "ratelimited", "readonly", "internal_api_error_DBQueryError"})

    def __init__(self, code: str, info: str, retry_after: float | None = None) -> None:
        super().__init__(f"MediaWiki API error {code}: {info}")
        self.code = code
        self.retry_after = retry_after  # seconds the server asked us to wait (maxlag: at least the lag)


class ServerBusyError(wikipediaapi.WikiHttpError):
    """HTTP 5xx, with the wait its Retry-After header asks for (503 during maintenance or overload)."""

    def __init__(self, status_code: int, url: str, retry_after: float | None) -> None:
        super().__init__(status_code, url)
        self.retry_after = retry_after


def is_transient(err: BaseException) -> bool:
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
    """The wait the server asked for: Retry-After on 429 and 5xx, the lag (or Retry-After) on maxlag."""
    value = getattr(err, "retry_after", None)
    return float(value) if value is not None else None


def _api_error(error: Any, response: httpx.Response) -> MediaWikiAPIError:
    """The error envelope as an exception; maxlag waits for the lag it reports, or Retry-After if longer."""
    error = error if isinstance(error, dict) else {}
    code = str(error.get("code", "unknown"))
    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
    if code == "maxlag":
        lag = error.get("lag")
        if isinstance(lag, (int, float)) and not isinstance(lag, bool):
            retry_after = max(float(lag), retry_after or 0.0)
    return MediaWikiAPIError(code, str(error.get("info", "")), retry_after)


def describe(err: BaseException) -> str:
    """The error as one line for failure lists and messages, any credential in a URL masked."""
    return redact_url(f"{type(err).__name__}: {err}")


def split_endpoint(api_url: str) -> tuple[str, httpx.BasicAuth | None, dict[str, str]]:
    """(the endpoint without userinfo, query or fragment; basic auth from its userinfo; its query).

    The bare endpoint is what wikipedia-api puts into its errors and log lines; the credentials travel
    beside it (as the client's auth and default parameters), so they reach the server and nothing else.
    """
    url = httpx.URL(api_url)
    auth = httpx.BasicAuth(url.username, url.password) if url.userinfo else None
    bare = url.copy_with(username=None, password=None, query=None, fragment=None)
    return str(bare), auth, dict(url.params.multi_items())


class _Transport(wikipediaapi.Wikipedia):
    """wikipedia-api's client with a configurable endpoint and the API error envelope checked.

    Proxies and CA settings from the environment are not used (`trust_env=False`): the endpoint the
    config names is the one connected to.
    """

    def __init__(self, api_url: str, **kwargs: Any) -> None:
        self._api_url, auth, params = split_endpoint(api_url)
        super().__init__(
            **kwargs,
            auth=auth,
            params=params,
            trust_env=False,
            transport=httpx.HTTPTransport(trust_env=False),
        )

    def _build_url(self, language: str) -> str:  # type: ignore[override]
        return self._api_url

    def query(self, params: dict[str, Any]) -> dict[str, Any]:
        full = self._construct_params_standalone({"action": "query", "formatversion": 2, **params})
        return self._get(self.language, full)

    def _process_response(self, r: httpx.Response, url: str) -> dict[str, Any]:
        """wikipedia-api's status checks, plus what only the response can tell: the wait asked for on
        429/5xx (a Retry-After date as well as seconds) and the error envelope with its maxlag lag."""
        if r.status_code == 429 or r.status_code >= 500:
            retry_after = retry_after_seconds(r.headers.get("Retry-After"))
            if r.status_code == 429:
                error = wikipediaapi.WikiRateLimitError(url)
                error.retry_after = retry_after  # type: ignore[assignment]  # seconds, fractional or not
                raise error
            raise ServerBusyError(r.status_code, url, retry_after)
        raw = super()._process_response(r, url)
        if not isinstance(raw, dict):
            raise wikipediaapi.WikiInvalidJsonError(self._api_url)
        if "error" in raw:
            raise _api_error(raw["error"], r)
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
        self,
        endpoint: str,
        user_agent: str,
        *,
        language: str,
        maxlag: int | None,
        timeout_s: float,
        retry: RetryConfig,
        search_batch: int = MAX_SEARCH_LIMIT,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.search_batch = search_batch
        self.transport = _Transport(
            endpoint,
            user_agent=user_agent,
            language=language,
            extract_format=wikipediaapi.ExtractFormat.WIKI,
            extra_api_params={"maxlag": maxlag} if maxlag is not None else None,
            max_retries=0,  # retries are ours (jitter, maxlag, failure accounting)
            timeout=timeout_s,
        )
        self.retry = RetryPolicy(retry, sleep=sleep)

    def close(self) -> None:
        self.transport._client.close()  # wikipedia-api keeps its httpx.Client here and offers no close()

    def query(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.retry.call(
            lambda: self.transport.query(params), is_transient=is_transient, retry_after=_retry_after
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
            batch = min(self.search_batch, limit - len(titles))
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
