"""One slow server cannot hold the collect phase: a body that stalls is not retried, every URL has a
total budget across its attempts and redirects, and a name lookup counts inside the time a request has.
Budgets are asserted by counting attempts (with an injected clock where waits are involved)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tasks.sources.addresses import system_resolve
from tasks.sources.retry import RetryConfig
from tasks.sources.web import Rejected, WebConfig, WebFetcher
from tests.tasks.fakes.server import raw_socket_server
from tests.tasks.fakes.web import serve_site

AGENT = "tinyllama-tests/0.1 (tests@example.org)"


def config(host: str, **kw) -> WebConfig:
    base = {"per_host_delay_s": 0.0, "allow_hosts": [host]}
    return WebConfig(**{**base, **kw})


def test_a_body_that_stalls_after_bytes_arrived_is_fetched_once() -> None:
    """75 bytes dripped, then silence with the connection open and no Content-Length: one attempt."""
    page_requests: list[bytes] = []

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        request = conn.recv(4096)
        if request.startswith(b"GET /robots.txt"):
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        page_requests.append(request)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\n\r\n")
        for _ in range(75):
            conn.sendall(b"x")
            time.sleep(0.005)
        stop.wait()  # stalls until the test is over

    with raw_socket_server(answer, threaded=True) as port:
        cfg = config(
            f"127.0.0.1:{port}",
            timeout_s=0.5,
            request_deadline_s=30.0,
            retry=RetryConfig(retries=5, backoff_s=0.001, max_backoff_s=0.01),
        )
        with pytest.raises(Rejected, match=r"stalled after 75 bytes.*not retried"):
            WebFetcher(cfg, AGENT).fetch(f"http://127.0.0.1:{port}/slow.txt")
    assert len(page_requests) == 1


class FakeTime:
    """A clock that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_retries_stop_when_the_url_budget_is_spent(server) -> None:
    """Backoffs 1, 2, 4 s fit into 10 s; the fourth failure would wait 8 s with 3 left: 4 attempts, not 21."""
    with serve_site(server) as site:
        site.flaky_left = 100  # /flaky.html answers 503 for the next 100 requests
        fake = FakeTime()
        cfg = config(
            site.url.removeprefix("http://"),
            url_budget_s=10.0,
            retry=RetryConfig(retries=20, backoff_s=1.0, max_backoff_s=60.0, jitter=0.0),
        )
        fetcher = WebFetcher(cfg, AGENT, sleep=fake.sleep, clock=fake.clock)
        with pytest.raises(Exception, match="HTTP 503"):
            fetcher.fetch(f"{site.url}/flaky.html")
        assert site.count("/flaky.html") == 4 and fake.now == 7.0
        assert fetcher.fetch(f"{site.url}/article.html").title  # the next URL has a budget of its own


def test_the_budget_cuts_a_request_shorter_than_its_deadline(server) -> None:
    with serve_site(server) as site:
        site.drip_bytes, site.drip_interval_s = 100, 0.05  # 5 s of drip, each byte well inside timeout_s
        cfg = config(site.url.removeprefix("http://"), url_budget_s=0.5, request_deadline_s=60.0)
        start = time.monotonic()
        with pytest.raises(Rejected, match=r"url_budget_s=0\.5 s spent"):
            WebFetcher(cfg, AGENT).fetch(f"{site.url}/drip.html")
        assert time.monotonic() - start < 3.0
        assert site.count("/drip.html") == 1


def test_a_name_lookup_that_hangs_is_cut_at_the_request_timeout(server) -> None:
    """A redirect to `localhost.` whose lookup hangs: every attempt's lookup ends after timeout_s."""
    lookups: list[str] = []
    released = threading.Event()

    def resolve(host: str, port: int) -> list[str]:
        if host.rstrip(".") != "localhost":
            return system_resolve(host, port)
        lookups.append(host)
        released.wait(5.0)  # a resolver stuck far longer than the request may take
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    with serve_site(server) as site:
        port = site.url.rsplit(":", 1)[1]
        cfg = config(
            site.url.removeprefix("http://"),
            timeout_s=0.3,
            retry=RetryConfig(retries=3, backoff_s=0.001, max_backoff_s=0.01),
        )
        fetcher = WebFetcher(cfg, AGENT, resolve=resolve)
        start = time.monotonic()
        try:
            with pytest.raises(Exception, match=r"cannot resolve the host.*took longer than 0\.3 s"):
                fetcher.fetch(f"{site.url}/redirect?to=http://localhost.:{port}/article.html")
            elapsed = time.monotonic() - start
        finally:
            released.set()
    assert len(lookups) == 4  # the first try and 3 retries, each given up after timeout_s
    assert elapsed < 3.0, elapsed
