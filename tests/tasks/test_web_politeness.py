"""robots.txt's Crawl-delay spaces the requests to its site (capped by max_crawl_delay_s), measured with an
injected clock and sleep against a loopback site."""

from __future__ import annotations

import pytest

from tasks.sources.retry import RetryConfig
from tasks.sources.web import WebConfig, WebFetcher
from tests.tasks.fakes.web import ROBOTS, serve_site

AGENT = "tinyllama-tests/0.1 (tests@example.org)"


class FakeTime:
    """A clock that moves only when slept on; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize(("crawl_delay", "cap", "expected"), [(7, 30.0, 7.0), (1000, 30.0, 30.0)])
def test_crawl_delay_is_applied_and_capped(server, crawl_delay: int, cap: float, expected: float) -> None:
    with serve_site(server) as site:
        site.robots = f"User-agent: *\nCrawl-delay: {crawl_delay}\n" + ROBOTS.split("\n", 1)[1]
        time = FakeTime()
        cfg = WebConfig(
            per_host_delay_s=0.0,
            max_crawl_delay_s=cap,
            retry=RetryConfig(retries=0),
            allow_hosts=[site.url.removeprefix("http://")],
        )
        fetcher = WebFetcher(cfg, AGENT, sleep=time.sleep, clock=time.clock)
        for page in ("article.html", "plain.txt", "latin1.html"):
            fetcher.fetch(f"{site.url}/{page}")
    # robots.txt first (no wait), then each page one Crawl-delay after the request before it
    assert site.hits == ["/robots.txt", "/article.html", "/plain.txt", "/latin1.html"]
    assert time.sleeps == [expected] * 3


def test_one_origin_one_key_even_with_userinfo(server) -> None:
    """A URL with userinfo is the same site: its robots.txt is read once and its delay still applies."""
    with serve_site(server) as site:
        site.robots = "User-agent: *\nCrawl-delay: 5\n"
        time = FakeTime()
        host = site.url.removeprefix("http://")
        cfg = WebConfig(per_host_delay_s=0.0, retry=RetryConfig(retries=0), allow_hosts=[host])
        fetcher = WebFetcher(cfg, AGENT, sleep=time.sleep, clock=time.clock)
        fetcher.fetch(f"http://u:pw@{host}/article.html")
        fetcher.fetch(f"{site.url}/plain.txt")
    assert site.count("/robots.txt") == 1 and time.sleeps == [5.0, 5.0]
