"""A response body read up to a limit on its DECODED size, with memory bounded by that limit.

httpx decodes gzip one network chunk at a time and without a bound, so 64 KB of a gzip bomb become
64 MB in one call, before any size check can run. Here the raw bytes are decompressed with zlib's
`max_length`, so no more than the limit (plus one byte, to know there was more) is ever produced.
Only the encodings the fetcher asks for (`ACCEPT_ENCODING`) are read; any other is refused.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

ACCEPT_ENCODING = "gzip, deflate"


class BodyError(ValueError):
    """The body cannot be decoded (unsupported or corrupt content encoding)."""


class _Inflater:
    """gzip or deflate (zlib-wrapped, or raw as some servers send it) with a bound on each output."""

    def __init__(self, encoding: str) -> None:
        self.gzip = encoding in ("gzip", "x-gzip")
        self.raw_tried = False
        self.zlib = zlib.decompressobj(16 + zlib.MAX_WBITS if self.gzip else zlib.MAX_WBITS)
        self.started = False

    def decode(self, data: bytes, room: int) -> tuple[bytes, bytes]:
        """(up to `room` decoded bytes, the input not yet consumed)."""
        try:
            out = self.zlib.decompress(data, room)
        except zlib.error as err:
            if self.gzip or self.started or self.raw_tried:
                raise BodyError(f"corrupt {'gzip' if self.gzip else 'deflate'} body: {err}") from err
            self.raw_tried = True
            self.zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            return self.decode(data, room)
        self.started = self.started or bool(out)
        return out, self.zlib.unconsumed_tail


def _decoder(content_encoding: str) -> _Inflater | None:
    codings = [
        c.strip().lower() for c in content_encoding.split(",") if c.strip().lower() not in ("", "identity")
    ]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return _Inflater(codings[0])
    raise BodyError(f"unsupported Content-Encoding {content_encoding!r} (read: {ACCEPT_ENCODING}, identity)")


def read_limited(raw_chunks: Iterable[bytes], content_encoding: str, limit: int) -> tuple[bytes, bool]:
    """(the first `limit` decoded bytes, whether the body holds more); stops reading once past the limit."""
    inflater = _decoder(content_encoding)
    out = bytearray()
    for chunk in raw_chunks:
        pending = chunk
        while pending:
            room = limit + 1 - len(out)
            if inflater is None:
                piece, pending = pending[:room], pending[room:]
            else:
                piece, pending = inflater.decode(pending, room)
            out += piece
            if len(out) > limit:
                return bytes(out[:limit]), True
            if not piece:  # the input is used up (a stream ends only when the server ends it)
                break
    return bytes(out), False
