"""Response bodies read with a bound on their decoded size, and Retry-After read the way servers send it."""

from __future__ import annotations

import email.utils
import time
import zlib

import pytest

from tasks.sources.httpbody import BodyError, read_limited
from tasks.sources.retry import retry_after_seconds

TEXT = b"User-agent: *\nDisallow: /private\n" * 1000  # 34 KB


def chunks(data: bytes, size: int = 1000) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def compressed(data: bytes, wbits: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


@pytest.mark.parametrize(
    "encoding, wbits",
    [("gzip", 16 + zlib.MAX_WBITS), ("deflate", zlib.MAX_WBITS), ("deflate", -zlib.MAX_WBITS)],
)
def test_compressed_bodies_decode_whole_or_up_to_the_limit(encoding, wbits):
    body = chunks(compressed(TEXT, wbits))
    assert read_limited(body, encoding, len(TEXT)) == (TEXT, False)
    assert read_limited(body, encoding, 100) == (TEXT[:100], True)


def test_plain_bodies_and_identity():
    assert read_limited(chunks(TEXT), "", 100) == (TEXT[:100], True)
    assert read_limited(chunks(TEXT), "identity", len(TEXT)) == (TEXT, False)


def test_a_bomb_never_decodes_past_the_limit():
    bomb = compressed(b"\0" * 50_000_000, 16 + zlib.MAX_WBITS)  # 50 MB in ~50 KB
    data, more = read_limited([bomb], "gzip", 1000)  # one network chunk holding all of it
    assert (len(data), more) == (1000, True)


@pytest.mark.parametrize("encoding, reason", [("br", "unsupported"), ("gzip, gzip", "unsupported")])
def test_unsupported_encodings_are_refused(encoding, reason):
    with pytest.raises(BodyError, match=reason):
        read_limited([b"x"], encoding, 100)


def test_a_corrupt_body_is_refused():
    with pytest.raises(BodyError, match="corrupt gzip"):
        read_limited([b"not gzip at all"], "gzip", 100)


def test_retry_after_in_seconds_or_as_an_http_date():
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # past: go now
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 -0000") == 0.0  # "-0000" parses without a zone
    later = retry_after_seconds(email.utils.formatdate(time.time() + 120, usegmt=True))
    assert later is not None and 60 < later <= 120
