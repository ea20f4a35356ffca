"""Servers the task tests share: a loopback HTTP server, a fake MediaWiki on it, and moto's S3."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.moto_s3 import s3_server
from tests.tasks.fakes.mediawiki import serve_mediawiki
from tests.tasks.fakes.server import loopback


@pytest.fixture(scope="module")
def server():
    """One loopback server per test module; each test mounts its own routes."""
    with loopback() as lb:
        yield lb


@pytest.fixture
def wiki(server):
    """A MediaWiki Action API on the module's loopback server."""
    with serve_mediawiki(server) as fake:
        yield fake


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """moto's S3 server on loopback, one per test module."""
    with s3_server() as url:
        yield url
