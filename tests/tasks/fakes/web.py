"""A loopback web site with the pages a polite crawler must handle: robots.txt rules, redirects and
redirect loops, oversized and wrongly typed responses, an HTML bomb, flaky and rate-limited pages, and
hostile ones: a redirect anywhere (`/redirect?to=...`), an unknown charset, a broken Location, a body
dripped byte by byte and a gzip-bomb robots.txt."""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from werkzeug import Request, Response

from tests.tasks.fakes.server import Loopback

ARTICLE = """<!doctype html><html><head><title>Tiny  Models</title><style>body{color:red}</style>
<script>var tracking = "do not keep";</script></head>
<body><nav><a href="/">Home</a> | <a href="/about">About</a></nav>
<header><h1>Site banner</h1></header>
<main><h1>Tiny models</h1>
<p>Small language models are <b>trained</b> on modest corpora—state-of-the-art ideas, scaled down.</p>
<p>They run on a laptop; “quotes” and naïve café words survive.</p>
<ul><li>First point</li><li>Second point</li></ul>
<pre>def f(x):
    return x</pre></main>
<aside>Related: buy things</aside><footer>Copyright footer</footer></body></html>"""

ROBOTS = "User-agent: *\nDisallow: /private\n"


class _RawLocation(Response):
    """A redirect whose Location is sent as given (werkzeug would otherwise rewrite or refuse it)."""

    def __init__(self, *args, location: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.raw_location = location

    def get_wsgi_headers(self, environ):
        headers = super().get_wsgi_headers(environ)
        headers["Location"] = self.raw_location
        return headers


@dataclass
class FakeSite:
    url: str = ""
    hits: list[str] = field(default_factory=list)
    big_bytes_sent: int = 0
    flaky_left: int = 1
    limited_left: int = 1
    robots_status: int = 200
    robots: str = ROBOTS  # the robots.txt served
    robots_gzip_bytes: int = 0  # > 0: robots.txt is a gzip bomb decoding to this many bytes
    hosts: list[str] = field(default_factory=list)  # the Host header of every request
    drip_bytes: int = 40  # /drip.html sends this many bytes...
    drip_interval_s: float = 0.2  # ...one per interval
    drip_sent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, path: str) -> int:
        return self.hits.count(path)

    def handle(self, request: Request) -> Response:
        path = request.path
        with self._lock:
            self.hits.append(path)
            self.hosts.append(request.headers.get("Host", ""))
        if path == "/robots.txt":
            if self.robots_gzip_bytes:
                return Response(
                    _gzip_robots(self.robots_gzip_bytes),
                    200,
                    content_type="text/plain",
                    headers={"Content-Encoding": "gzip"},
                )
            return Response(self.robots, self.robots_status, content_type="text/plain")
        if path == "/redirect":
            return Response("", 302, headers={"Location": request.args["to"]})
        if path == "/to-broken":
            return _RawLocation("", 302, location="http://[::1")
        if path == "/bogus-charset.html":
            return Response(ARTICLE.encode(), 200, content_type="text/html; charset=x-bogus")
        if path == "/drip.html":
            return Response(self._drip(), 200, content_type="text/plain")
        if path in ("/article.html", "/private/secret.html"):
            return Response(ARTICLE, 200, content_type="text/html; charset=utf-8")
        if path == "/plain.txt":
            return Response(
                "Plain text page.\n\nSecond paragraph.", 200, content_type="text/plain; charset=utf-8"
            )
        if path == "/latin1.html":
            body = "<html><body><p>Café crème brûlée.</p></body></html>".encode("latin-1")
            return Response(body, 200, content_type="text/html; charset=iso-8859-1")
        if path == "/moved":
            return Response("", 301, headers={"Location": "/article.html"})
        if path == "/to-private":
            return Response("", 302, headers={"Location": "/private/secret.html"})
        if path == "/to-ftp":
            return Response("", 302, headers={"Location": "ftp://example.org/file.txt"})
        if path in ("/loop-a", "/loop-b"):
            return Response("", 302, headers={"Location": "/loop-b" if path == "/loop-a" else "/loop-a"})
        if path.startswith("/chain/"):
            n = int(path.rsplit("/", 1)[1])
            return Response("", 302, headers={"Location": f"/chain/{n + 1}"})
        if path == "/image.png":
            return Response(b"\x89PNG\r\n\x1a\n" + b"\0" * 100, 200, content_type="image/png")
        if path == "/big.html":
            return Response(self._big(), 200, content_type="text/html")  # streamed, no Content-Length
        if path == "/big-declared.html":
            return Response("x" * 300_000, 200, content_type="text/html")
        if path == "/bomb.html":
            depth = 50_000
            return Response(
                "<html><body>" + "<div>" * depth + "x" + "</div>" * depth, 200, content_type="text/html"
            )
        if path == "/flaky.html":
            with self._lock:
                self.flaky_left -= 1
                failing = self.flaky_left >= 0
            if failing:
                return Response("busy", 503)
            return Response(ARTICLE, 200, content_type="text/html")
        if path == "/limited.html":
            with self._lock:
                self.limited_left -= 1
                failing = self.limited_left >= 0
            if failing:
                return Response("slow down", 429, headers={"Retry-After": "3"})
            return Response(ARTICLE, 200, content_type="text/html")
        return Response("not found", 404)

    def _drip(self) -> Iterator[bytes]:
        for _ in range(self.drip_bytes):
            time.sleep(self.drip_interval_s)
            self.drip_sent += 1
            yield b"x"

    def _big(self) -> Iterator[bytes]:
        chunk = b"<p>" + b"filler " * 9000 + b"</p>\n"  # ~63 KB
        for _ in range(800):  # ~50 MB if nobody stops reading
            self.big_bytes_sent += len(chunk)
            yield chunk


def _gzip_robots(decoded_bytes: int) -> Iterator[bytes]:
    """A robots.txt of comment lines, gzip-compressed about 1000:1, whose one rule comes last."""
    gz = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    yield gz.compress(b"User-agent: *\n")
    line = b"# " + b"filler " * 140 + b"\n"  # ~1 KB
    block = line * 1000
    for _ in range(decoded_bytes // len(block)):
        yield gz.compress(block)
    yield gz.compress(b"Disallow: /article.html\n") + gz.flush()


@contextmanager
def serve_site(server: Loopback, site: FakeSite | None = None) -> Iterator[FakeSite]:
    site = site or FakeSite()
    site.url = server.url()
    with server.serving(site.handle):
        yield site
