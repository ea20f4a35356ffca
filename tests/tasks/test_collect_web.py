"""Web pages against a loopback site: main text, robots.txt, redirects, limits, faults, politeness,
and hostile pages: redirects to internal addresses, unknown charsets, drips and gzip bombs."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import threading
import time
import tracemalloc
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tasks.sources.base import SourceContext
from tasks.sources.htmltext import HTMLBombError, estimate_depth, html_to_text
from tasks.sources.progress import ProgressLog
from tasks.sources.retry import RetryConfig
from tasks.sources.web import Rejected, WebConfig, WebFetcher, WebSource
from tests.factories import collect_all
from tests.tasks.fakes.server import raw_socket_server
from tests.tasks.fakes.web import ARTICLE, FakeSite, serve_site

AGENT = "tinyllama-tests/0.1 (tests@example.org)"
FAST = RetryConfig(retries=3, backoff_s=0.001, max_backoff_s=0.01)


@pytest.fixture
def site(server):
    with serve_site(server) as fake:
        yield fake


def host_of(site: FakeSite) -> str:
    return site.url.split("://", 1)[1]


def web_config(site: FakeSite, **kw) -> WebConfig:
    """Fast settings; the loopback site (exactly its host:port) is the one internal host allowed."""
    base = {"per_host_delay_s": 0.0, "retry": FAST, "max_bytes": 1_000_000, "allow_hosts": [host_of(site)]}
    return WebConfig(**{**base, **kw})


def fetcher(site: FakeSite, sleeps: list[float] | None = None, **kw) -> WebFetcher:
    sleep = sleeps.append if sleeps is not None else lambda _s: None
    return WebFetcher(web_config(site, **kw), AGENT, sleep=sleep)


def test_main_text_without_boilerplate_and_title_kept(site):
    doc = fetcher(site).fetch(f"{site.url}/article.html")
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
    f = fetcher(site)
    assert f.fetch(f"{site.url}/plain.txt").text == "Plain text page.\n\nSecond paragraph."
    assert f.fetch(f"{site.url}/latin1.html").text == "Café crème brûlée."


def test_robots_txt_is_obeyed_also_after_a_redirect(site):
    f = fetcher(site)
    with pytest.raises(Rejected, match=r"robots\.txt"):
        f.fetch(f"{site.url}/private/secret.html")
    with pytest.raises(Rejected, match=r"robots\.txt"):
        f.fetch(f"{site.url}/to-private")
    assert site.count("/private/secret.html") == 0
    assert site.count("/robots.txt") == 1  # cached per host


@pytest.mark.parametrize("status, allowed", [(404, True), (403, False), (500, False)])
def test_missing_robots_allows_forbidden_or_broken_robots_disallows(site, status, allowed):
    site.robots_status = status
    f = fetcher(site)
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
        fetcher(site, max_bytes=100_000).fetch(f"{site.url}{path}")


def test_redirects_are_followed(site):
    doc = fetcher(site).fetch(f"{site.url}/moved")
    assert doc.url == f"{site.url}/article.html" and doc.title == "Tiny Models"


def test_only_http_and_https(site):
    with pytest.raises(Rejected, match="http and https only"):
        fetcher(site).fetch("file:///etc/passwd")


def test_oversized_stream_stops_reading(site):
    with pytest.raises(Rejected, match="stopped reading"):
        fetcher(site, max_bytes=100_000).fetch(f"{site.url}/big.html")
    time.sleep(0.2)  # let the server notice the closed connection
    assert site.big_bytes_sent < 15_000_000  # of ~50 MB on offer


def test_html_bomb_is_refused_before_parsing(site):
    # the message comes from the depth estimate that runs before the parser, which would take ~10 s
    with pytest.raises(Rejected, match="nested more than 2000"):
        fetcher(site).fetch(f"{site.url}/bomb.html")


def test_transient_errors_retry_and_retry_after_is_honoured(site):
    sleeps: list[float] = []
    f = fetcher(site, sleeps)
    assert f.fetch(f"{site.url}/flaky.html").title == "Tiny Models"
    assert f.fetch(f"{site.url}/limited.html").title == "Tiny Models"
    assert site.count("/flaky.html") == 2 and site.count("/limited.html") == 2
    assert 3.0 in sleeps


def test_per_host_delay_spaces_requests(site):
    sleeps: list[float] = []
    f = fetcher(site, sleeps, per_host_delay_s=0.5)
    for _ in range(3):
        f.fetch(f"{site.url}/plain.txt")
    # robots.txt, then three pages: every request after the first waited most of the delay.
    assert len([s for s in sleeps if 0.3 < s <= 0.5]) == 3


def test_collect_web_records_rejections_and_resumes(site, tmp_path):
    cfg = web_config(
        site, urls=[f"{site.url}/article.html", f"{site.url}/image.png", f"{site.url}/plain.txt"]
    )
    ctx = SourceContext(progress=ProgressLog(tmp_path))
    documents, summary = collect_all(WebSource(cfg, AGENT), ctx)
    assert [d.title for d in documents] == ["Tiny Models", "plain.txt"]
    assert summary.failures[0].title.endswith("/image.png")

    hits = len(site.hits)
    again, again_summary = collect_all(WebSource(cfg, AGENT), ctx)
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


# --- hostile pages (issue 11) ----------------------------------------------------------------------


@pytest.fixture
def trap():
    """A loopback port that listens but must never be connected to: a refused hop leaves it untouched."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        yield sock


def untouched(trap: socket.socket) -> bool:
    try:
        trap.accept()[0].close()
    except BlockingIOError:
        return True
    return False


def redirect(site: FakeSite, to: str) -> str:
    return f"{site.url}/redirect?to={quote(to, safe='')}"


def test_redirect_to_another_loopback_port_is_refused(site, trap):
    """allow_hosts names the site's exact host:port; the same address on another port is not allowed."""
    port = trap.getsockname()[1]
    with pytest.raises(Rejected, match=r"127\.0\.0\.1.* not a global address \(loopback\).*allow_hosts"):
        fetcher(site).fetch(redirect(site, f"http://127.0.0.1:{port}/x"))
    assert untouched(trap)


@pytest.mark.parametrize(
    "spelling", ["localhost", "2130706433", "0x7f.1", "127.1", "017700000001", "[::ffff:127.0.0.1]", "[::1]"]
)
def test_other_spellings_of_loopback_are_refused(site, spelling):
    """The site's own port under another name or IP spelling is refused: allow_hosts matches exactly."""
    port = host_of(site).rsplit(":", 1)[1]
    target = f"http://{spelling}:{port}/article.html"
    with pytest.raises(Rejected, match="not a global address"):
        fetcher(site).fetch(redirect(site, target))
    with pytest.raises(Rejected, match="not a global address"):
        fetcher(site).fetch(target)  # the first URL is checked like every redirect
    assert site.count("/article.html") == 0


def test_the_socket_connects_to_the_checked_address(site, monkeypatch):
    """The name is resolved once, by the check; the connection goes to that address, not a new lookup.

    The system resolver stands in for a rebinding DNS server (which cannot run here): any lookup of the
    name after the check fails the test.
    """
    port = host_of(site).rsplit(":", 1)[1]
    real = socket.getaddrinfo
    late_lookups: list[str] = []

    def system_resolver(host, *args, **kwargs):
        try:
            ipaddress.ip_address(host)  # an address: connecting to it needs no lookup
        except ValueError:
            late_lookups.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "rebinding stand-in: not resolvable now") from None
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", system_resolver)
    cfg = web_config(site, allow_hosts=[f"site.example:{port}"])
    # the site listens on 127.0.0.1 only: [::1] refuses, and the next checked address is tried
    checked = WebFetcher(cfg, AGENT, sleep=lambda _s: None, resolve=lambda host, _port: ["::1", "127.0.0.1"])
    doc = checked.fetch(f"http://site.example:{port}/article.html")
    assert doc.title == "Tiny Models" and doc.url == f"http://site.example:{port}/article.html"
    assert late_lookups == []
    assert site.hosts[-2:] == [f"site.example:{port}"] * 2  # robots.txt and the page, Host header kept


def test_refused_and_broken_pages_are_recorded_and_the_phase_goes_on(site, trap, tmp_path):
    port = trap.getsockname()[1]
    urls = [
        f"{site.url}/bogus-charset.html",
        redirect(site, f"http://127.0.0.1:{port}/x"),
        f"{site.url}/to-broken",
        "http://[::1",
        f"{site.url}/article.html",
    ]
    documents, summary = collect_all(WebSource(web_config(site, urls=urls), AGENT))
    assert [d.title for d in documents] == ["Tiny Models"]
    errors = [f.error for f in summary.failures]
    assert len(errors) == 4 and summary.failed == 4
    assert "unknown charset 'x-bogus'" in errors[0]
    assert "not a global address (loopback)" in errors[1] and "allow_hosts" in errors[1]
    assert "invalid URL" in errors[2] and "invalid URL" in errors[3]
    assert untouched(trap)


def test_robots_txt_is_read_up_to_its_cap_even_when_gzip_bombed(site):
    """A 20 MB robots.txt (20 KB gzipped) is read up to robots_max_bytes; the rule past the cap is unseen."""
    site.robots_gzip_bytes = 20_000_000
    f = fetcher(site, robots_max_bytes=100_000)
    tracemalloc.start()
    try:
        allowed = f.allowed(f"{site.url}/article.html")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert allowed  # "Disallow: /article.html" sits 20 MB in, past the cap
    assert peak < 5_000_000  # the old code held the whole decoded file, several times over


def test_a_dripping_page_is_stopped_by_the_total_deadline(site):
    """One byte every 0.2 s never trips the per-read timeout; the deadline of the whole request does."""
    site.drip_bytes, site.drip_interval_s = 40, 0.2
    with pytest.raises(Rejected, match=r"request_deadline_s=1"):
        fetcher(site, timeout_s=1, request_deadline_s=1).fetch(f"{site.url}/drip.html")
    assert site.drip_sent < site.drip_bytes
    assert site.count("/drip.html") == 1  # a deadline is not retried


@pytest.fixture
def tls_server(tmp_path):
    """A loopback TLS server with a self-signed certificate for site.example; it records the SNI names."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site.example")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("site.example")]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    names: list[str | None] = []
    context.sni_callback = lambda _sock, server_name, _ctx: names.append(server_name)

    def answer(conn: socket.socket, _stop: threading.Event) -> None:
        conn.settimeout(30)
        with contextlib.suppress(ssl.SSLError, OSError):  # the client refuses the certificate
            context.wrap_socket(conn, server_side=True).close()

    with raw_socket_server(answer) as port:
        yield port, names


def test_tls_keeps_the_host_name_while_connecting_to_the_pinned_address(site, tls_server):
    """SNI carries the name, not the pinned IP, and the certificate is checked (self-signed: refused)."""
    port, names = tls_server
    cfg = web_config(site, allow_hosts=[f"site.example:{port}"])
    checked = WebFetcher(cfg, AGENT, sleep=lambda _s: None, resolve=lambda host, _port: ["127.0.0.1"])
    with pytest.raises(Rejected, match="CERTIFICATE_VERIFY_FAILED"):
        checked.fetch(f"https://site.example:{port}/page.html")
    assert names and set(names) == {"site.example"}


DRIPPED_HEADER = b"HTTP/1.1 200 OK\r\nX-Drip: " + b"x" * 40  # 6.5 s at one byte per 0.1 s, then hang up


@pytest.fixture
def header_drip():
    """A loopback server that answers every request with its status line, one byte every 0.1 s."""
    sent = {"bytes": 0}

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        with contextlib.suppress(OSError):
            conn.recv(65536)
            for byte in DRIPPED_HEADER:
                if stop.wait(0.1):
                    break
                conn.sendall(bytes([byte]))
                sent["bytes"] += 1

    with raw_socket_server(answer) as port:
        yield port, sent


def test_dripped_headers_hit_the_deadline_too(site, header_drip):
    """The deadline covers the status line and headers (robots.txt's here), not only the body."""
    port, sent = header_drip
    f = fetcher(site, timeout_s=1, request_deadline_s=1, allow_hosts=[f"127.0.0.1:{port}"])
    with pytest.raises(Rejected, match=r"robots\.txt.*request_deadline_s=1"):
        f.fetch(f"http://127.0.0.1:{port}/page.html")
    assert 0 < sent["bytes"] < len(DRIPPED_HEADER)
