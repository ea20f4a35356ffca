"""A loopback MediaWiki Action API that answers what `tasks.sources.mediawiki` (through wikipedia-api) asks.

It speaks `formatversion=2` for `list=search` (with `sroffset` continuation), `prop=info|pageprops`
for up to 50 titles (redirects, missing and disambiguation pages) and `prop=extracts` with
`explaintext`. Faults are queued per request kind and title: HTTP 429 with Retry-After, 503 (with
Retry-After when asked), a response slower than the client's timeout, truncated JSON and a maxlag
error envelope carrying its lag, as MediaWiki sends it. Every request
is logged so tests can count what the client asked for.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from werkzeug import Request, Response

from tests.tasks.fakes.server import Loopback

API_PATH = "/w/api.php"


@dataclass
class FakePage:
    title: str
    text: str  # the plain-text extract as TextExtracts returns it ("== Heading ==" lines)
    revid: int = 1000
    pageid: int = 0
    disambiguation: bool = False


@dataclass
class Fault:
    kind: str  # "search" | "info" | "extracts"
    fault: str  # "429" | "503" | "slow" | "truncated" | "garbage" | "maxlag" | "404"
    title: str | None = None  # only requests naming this title
    times: int = 1
    retry_after: str | None = None  # the Retry-After header (429 and maxlag send "0" when unset)
    lag: float = 7.0  # maxlag: seconds the replicas lag, as the error reports them


@dataclass
class FakeMediaWiki:
    pages: dict[str, FakePage] = field(default_factory=dict)
    search_index: dict[str, list[str]] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)
    user_agents: list[str] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)  # the Authorization header of every request
    slow_s: float = 1.0
    injected: int = 0  # faults served so far: what a client's retry count must equal
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next_revid: int = 5000

    # --- the world ----------------------------------------------------------------------------
    def add(
        self, title: str, text: str, *, topics: tuple[str, ...] = (), disambiguation: bool = False
    ) -> None:
        self._next_revid += 1
        self.pages[title] = FakePage(title, text, self._next_revid, len(self.pages) + 1, disambiguation)
        for topic in topics:
            self.search_index.setdefault(topic, []).append(title)

    def edit(self, title: str, text: str) -> int:
        self._next_revid += 1
        page = self.pages[title]
        page.text, page.revid = text, self._next_revid
        return page.revid

    def fail(
        self,
        kind: str,
        fault: str,
        *,
        title: str | None = None,
        times: int = 1,
        retry_after: str | None = None,
        lag: float = 7.0,
    ):
        self.faults.append(Fault(kind, fault, title, times, retry_after, lag))

    def count(self, kind: str, title: str | None = None) -> int:
        return sum(
            1
            for r in self.requests
            if _kind(r) == kind and (title is None or title in r.get("titles", "").split("|"))
        )

    # --- the API ------------------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        params = {k: request.args.get(k, "") for k in request.args}
        with self._lock:
            self.requests.append(params)
            self.user_agents.append(request.headers.get("User-Agent", ""))
            self.authorizations.append(request.headers.get("Authorization", ""))
            kind = _kind(params)
            fault = self._take_fault(kind, params.get("titles", "").split("|"))
        if fault is not None:
            faulty = self._fault_response(fault)
            if faulty is not None:
                return faulty
        if kind == "search":
            body = self._search(params)
        elif kind == "extracts":
            body = self._extracts(params)
        else:
            body = self._info(params)
        return Response(json.dumps(body), 200, content_type="application/json")

    def _take_fault(self, kind: str, titles: list[str]) -> Fault | None:
        for fault in self.faults:
            if fault.times > 0 and fault.kind == kind and (fault.title is None or fault.title in titles):
                fault.times -= 1
                self.injected += 1
                return fault
        return None

    def _fault_response(self, fault: Fault) -> Response | None:
        if fault.fault == "429":
            return Response("slow down", 429, headers={"Retry-After": fault.retry_after or "0"})
        if fault.fault in ("503", "404"):
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            return Response("unavailable", int(fault.fault), headers=headers)
        if fault.fault == "truncated":
            return Response(
                '{"batchcomplete": true, "query": {"pages": [{"ti', 200, content_type="application/json"
            )
        if fault.fault == "garbage":
            return Response("<html>not json</html>", 200, content_type="text/html")
        if fault.fault == "maxlag":
            info = f"Waiting for a replica: {fault.lag} seconds lagged"
            body = {"error": {"code": "maxlag", "info": info, "host": "db1", "lag": fault.lag, "type": "db"}}
            headers = {"Retry-After": fault.retry_after or "0", "X-Database-Lag": str(fault.lag)}
            return Response(json.dumps(body), 200, content_type="application/json", headers=headers)
        if fault.fault == "slow":
            time.sleep(self.slow_s)
            return None  # then answer normally, too late for the client
        raise AssertionError(f"unknown fault {fault.fault}")

    def _search(self, params: dict[str, str]) -> dict[str, Any]:
        hits = self.search_index.get(params["srsearch"], [])
        offset, limit = int(params.get("sroffset", 0)), int(params.get("srlimit", 10))
        page = hits[offset : offset + limit]
        body: dict[str, Any] = {"query": {"search": [{"ns": 0, "title": t} for t in page]}}
        if offset + limit < len(hits):
            body["continue"] = {"sroffset": offset + limit, "continue": "-||"}
        return body

    def _resolve(self, titles: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, str]], list[str]]:
        redirects, finals = [], []
        for t in titles:
            if t in self.redirects:
                redirects.append({"from": t, "to": self.redirects[t]})
                t = self.redirects[t]
            finals.append(t)
        pages = []
        for t in dict.fromkeys(finals):
            page = self.pages.get(t)
            if page is None:
                pages.append({"ns": 0, "title": t, "missing": True})
                continue
            entry: dict[str, Any] = {
                "pageid": page.pageid,
                "ns": 0,
                "title": t,
                "lastrevid": page.revid,
                "fullurl": f"https://en.wikipedia.org/wiki/{t.replace(' ', '_')}",
            }
            if page.disambiguation:
                entry["pageprops"] = {"disambiguation": ""}
            pages.append(entry)
        return pages, redirects, finals

    def _info(self, params: dict[str, str]) -> dict[str, Any]:
        titles = params["titles"].split("|")
        assert len(titles) <= 50, "the real API refuses more than 50 titles"
        pages, redirects, _ = self._resolve(titles)
        query: dict[str, Any] = {"pages": pages}
        if redirects:
            query["redirects"] = redirects
        return {"batchcomplete": True, "query": query}

    def _extracts(self, params: dict[str, str]) -> dict[str, Any]:
        titles = params["titles"].split("|")
        assert len(titles) == 1, "whole-article extracts come one page per request"
        pages, _, finals = self._resolve(titles)
        page = pages[0]
        if not page.get("missing"):
            page["extract"] = self.pages[finals[0]].text
        return {"batchcomplete": True, "query": {"pages": [page]}}


def _kind(params: dict[str, str]) -> str:
    if params.get("list") == "search":
        return "search"
    return "extracts" if "extracts" in params.get("prop", "") else "info"


@contextmanager
def serve_mediawiki(server: Loopback) -> Iterator[FakeMediaWiki]:
    """A fresh fake MediaWiki answering on `server` for the length of one test."""
    wiki = FakeMediaWiki(url=server.url(API_PATH))
    with server.serving(wiki.handle):
        yield wiki


def article(title: str, n_paragraphs: int = 3, seed: int = 0) -> str:
    """A plain-text extract shaped like TextExtracts output, distinct per title and seed."""
    words = [f"{title.lower().replace(' ', '')}{i}" for i in range(7)]
    body = []
    for p in range(n_paragraphs):
        sentence = " ".join(words[(p + k + seed) % 7] for k in range(12))
        body.append(
            f"{sentence.capitalize()} about {title}, part {p} - revision {seed}. It has enough words."
        )
    return f"{body[0]}\n{body[1]}\n\n\n== History ==\n{chr(10).join(body[2:])}"
