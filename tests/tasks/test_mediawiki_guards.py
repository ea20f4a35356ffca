"""What the MediaWiki client may be pointed at and what it says: the language code cannot name another
host, proxies and .netrc from the environment are not used, and an endpoint's credentials reach the
server but no error message, failure list or log line."""

from __future__ import annotations

import base64
import socket
import threading
import traceback
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from tasks.collect import CollectConfig, run_collect
from tasks.sources.errors import TransientSourceError
from tasks.sources.mediawiki import MediaWikiClient, split_endpoint
from tasks.sources.retry import RetryConfig
from tasks.sources.wikipedia import WikipediaConfig
from tests.tasks.fakes.mediawiki import article
from tests.tasks.fakes.server import raw_socket_server

AGENT = "tinyllama-tests/0.1 (https://example.org/tests; tests@example.org)"
SECRETS = ("s3cret", "tok-abc")


# -- the language code is the endpoint's host name -------------------------------------------------------


@pytest.mark.parametrize(
    "language",
    [
        "169.254.169.254/latest/meta-data/#",
        "en.wikipedia.org.evil.example/#",
        "en@127.0.0.1",
        "en:8080",
        "EN",
        "e",
        "",
        "en wiki",
    ],
)
def test_a_language_that_is_not_a_code_is_refused(language: str) -> None:
    with pytest.raises(ValidationError, match=r"collect\.wikipedia\.language"):
        WikipediaConfig(language=language)


@pytest.mark.parametrize("language", ["en", "de", "simple", "zh-min-nan", "be-tarask", "roa-rup"])
def test_a_language_code_builds_an_endpoint_on_its_wikipedia(language: str) -> None:
    endpoint = httpx.URL(WikipediaConfig(language=language).endpoint)
    assert endpoint.host == f"{language}.wikipedia.org" and endpoint.path == "/w/api.php"


# -- the environment does not redirect or authenticate requests --------------------------------------------


@pytest.fixture
def proxy(monkeypatch):
    """A loopback 'proxy' named by every proxy variable; it records whether anyone connected."""
    contacted = threading.Event()

    def answer(conn: socket.socket, _stop: threading.Event) -> None:
        contacted.set()
        conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    with raw_socket_server(answer) as port:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        yield contacted


def test_proxies_and_netrc_from_the_environment_are_not_used(wiki, proxy, monkeypatch, tmp_path) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login mallory password from-netrc\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    wiki.add("AI page", article("AI page"), topics=("ai",))
    client = MediaWikiClient(
        wiki.url, AGENT, language="en", maxlag=None, timeout_s=5.0, retry=RetryConfig(retries=0)
    )
    try:
        assert client.search("ai", 5) == ["AI page"]
    finally:
        client.close()
    assert not proxy.is_set(), "the request went to the proxy named in the environment"
    assert wiki.authorizations == [""]


# -- credentials in the endpoint ---------------------------------------------------------------------------


def test_endpoint_credentials_reach_the_server_as_auth_and_parameters(wiki) -> None:
    url = wiki.url.replace("http://", "http://alice:s3cret@") + "?token=tok-abc"
    bare, _auth, params = split_endpoint(url)
    assert bare == wiki.url and params == {"token": "tok-abc"}
    wiki.add("AI page", article("AI page"), topics=("ai",))
    client = MediaWikiClient(url, AGENT, language="en", maxlag=None, timeout_s=5.0, retry=RetryConfig())
    try:
        assert client.search("ai", 5) == ["AI page"]
    finally:
        client.close()
    assert wiki.authorizations == ["Basic " + base64.b64encode(b"alice:s3cret").decode()]
    assert wiki.requests[0]["token"] == "tok-abc"


def _chain(err: BaseException) -> str:
    return "".join(traceback.format_exception(err))


def test_an_unreachable_endpoint_with_credentials_fails_without_showing_them(tmp_path: Path) -> None:
    """Port 1 on loopback refuses: the error leaving run_collect, its causes and the log name no secret."""
    cfg = CollectConfig(
        user_agent=AGENT,
        wikipedia={
            "api_url": "http://alice:s3cret@127.0.0.1:1/w/api.php?token=tok-abc",
            "topics": ["ai"],
            "retry": {"retries": 1, "backoff_s": 0.0},
            "timeout_s": 2.0,
        },
    )
    lines: list[str] = []
    with pytest.raises(TransientSourceError) as caught:
        run_collect(cfg, tmp_path / "root", log=lines.append)
    shown = _chain(caught.value) + "\n".join(lines)
    assert "127.0.0.1:1/w/api.php" in shown  # the endpoint is still named
    assert not [s for s in SECRETS if s in shown], shown
