"""Web pages against a loopback site: main text, robots.txt, redirects, limits, faults, politeness."""

from __future__ import annotations

import time

import pytest

from tasks.sources.base import SourceContext
from tasks.sources.htmltext import HTMLBombError, estimate_depth, html_to_text
from tasks.sources.progress import ProgressLog
from tasks.sources.retry import RetryConfig
from tasks.sources.web import Rejected, WebConfig, WebFetcher, WebSource
from tests.tasks.fakes.server import loopback
from tests.tasks.fakes.web import ARTICLE, serve_site

AGENT = "tinyllama-tests/0.1 (tests@example.org)"
FAST = RetryConfig(retries=3, backoff_s=0.001, max_backoff_s=0.01)


@pytest.fixture(scope="module")
def server():
    with loopback() as lb:
        yield lb


@pytest.fixture
def site(server):
    with serve_site(server) as fake:
        yield fake


def fetcher(sleeps: list[float] | None = None, **kw) -> WebFetcher:
    cfg = WebConfig(**{"per_host_delay_s": 0.0, "retry": FAST, "max_bytes": 1_000_000, **kw})
    return WebFetcher(cfg, AGENT, sleep=(sleeps.append if sleeps is not None else lambda _s: None))


def test_main_text_without_boilerplate_and_title_kept(site):
    doc = fetcher().fetch(f"{site.url}/article.html")
    assert doc.title == "Tiny Models"
    assert doc.source == "web" and doc.url == f"{site.url}/article.html"
    assert doc.text.split("\n\n") == [
        "Tiny models",
        "Small language models are trained on modest corpora—state-of-the-art ideas, scaled down.",
        "They run on a laptop; “quotes” and naïve café words survive.",
        "First point",
        "Second point",
        "def f(x):\n    return x",
    ]
    for gone in ("Home", "Site banner", "tracking", "color:red", "buy things", "Copyright"):
        assert gone not in doc.text


def test_plain_text_and_declared_charset(site):
    f = fetcher()
    assert f.fetch(f"{site.url}/plain.txt").text == "Plain text page.\n\nSecond paragraph."
    assert f.fetch(f"{site.url}/latin1.html").text == "Café crème brûlée."


def test_robots_txt_is_obeyed_also_after_a_redirect(site):
    f = fetcher()
    with pytest.raises(Rejected, match=r"robots\.txt"):
        f.fetch(f"{site.url}/private/secret.html")
    with pytest.raises(Rejected, match=r"robots\.txt"):
        f.fetch(f"{site.url}/to-private")
    assert site.count("/private/secret.html") == 0
    assert site.count("/robots.txt") == 1  # cached per host


@pytest.mark.parametrize("status, allowed", [(404, True), (403, False), (500, False)])
def test_missing_robots_allows_forbidden_or_broken_robots_disallows(site, status, allowed):
    site.robots_status = status
    f = fetcher()
    assert f.allowed(f"{site.url}/article.html") is allowed


@pytest.mark.parametrize(
    "path, reason",
    [
        ("/loop-a", "redirect loop"),
        ("/chain/0", "more than 5 redirects"),
        ("/to-ftp", "http and https only"),
        ("/image.png", "'image/png' is not HTML or plain text"),
        ("/big-declared.html", "over max_bytes"),
        ("/nothing", "HTTP 404"),
    ],
)
def test_bad_pages_are_rejected_with_a_reason(site, path, reason):
    with pytest.raises(Rejected, match=reason):
        fetcher(max_bytes=100_000).fetch(f"{site.url}{path}")


def test_redirects_are_followed(site):
    doc = fetcher().fetch(f"{site.url}/moved")
    assert doc.url == f"{site.url}/article.html" and doc.title == "Tiny Models"


def test_only_http_and_https(site):
    with pytest.raises(Rejected, match="http and https only"):
        fetcher().fetch("file:///etc/passwd")


def test_oversized_stream_stops_reading(site):
    with pytest.raises(Rejected, match="stopped reading"):
        fetcher(max_bytes=100_000).fetch(f"{site.url}/big.html")
    time.sleep(0.2)  # let the server notice the closed connection
    assert site.big_bytes_sent < 15_000_000  # of ~50 MB on offer


def test_html_bomb_is_refused_before_parsing(site):
    # the message comes from the depth estimate that runs before the parser, which would take ~10 s
    with pytest.raises(Rejected, match="nested more than 2000"):
        fetcher().fetch(f"{site.url}/bomb.html")


def test_transient_errors_retry_and_retry_after_is_honoured(site):
    sleeps: list[float] = []
    f = fetcher(sleeps)
    assert f.fetch(f"{site.url}/flaky.html").title == "Tiny Models"
    assert f.fetch(f"{site.url}/limited.html").title == "Tiny Models"
    assert site.count("/flaky.html") == 2 and site.count("/limited.html") == 2
    assert 3.0 in sleeps


def test_per_host_delay_spaces_requests(site):
    sleeps: list[float] = []
    f = fetcher(sleeps, per_host_delay_s=0.5)
    for _ in range(3):
        f.fetch(f"{site.url}/plain.txt")
    # robots.txt, then three pages: every request after the first waited most of the delay.
    assert len([s for s in sleeps if 0.3 < s <= 0.5]) == 3


def test_collect_web_records_rejections_and_resumes(site, tmp_path):
    cfg = WebConfig(
        urls=[f"{site.url}/article.html", f"{site.url}/image.png", f"{site.url}/plain.txt"],
        per_host_delay_s=0,
        retry=FAST,
    )
    ctx = SourceContext(progress=ProgressLog(tmp_path))
    documents, summary = WebSource(cfg, AGENT).collect(ctx)
    assert [d.title for d in documents] == ["Tiny Models", "plain.txt"]
    assert summary.failures[0].title.endswith("/image.png")

    hits = len(site.hits)
    again, again_summary = WebSource(cfg, AGENT).collect(ctx)
    assert again_summary.resumed == 2
    assert [d.doc_id for d in again] == [d.doc_id for d in documents]
    assert site.hits[hits:] == ["/robots.txt", "/image.png"]  # only the rejected one is asked again


def test_depth_estimate_and_guard():
    assert estimate_depth(ARTICLE, 100) < 10
    assert estimate_depth("<div>" * 5000, 3000) > 3000
    with pytest.raises(HTMLBombError):
        html_to_text("<span>" * 3000 + "x", max_depth=2000)
    # Unclosed <p>/<li> and void tags do not count as nesting.
    assert estimate_depth("<p>a<p>b<br><img src=x><li>c" * 2000, 100) <= 1
