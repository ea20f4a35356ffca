"""An httpx transport whose sockets go only to checked addresses, and only for as long as a request may take.

Connecting: httpcore asks its network backend to connect to the URL's host; this backend connects to
the addresses `AddressGuard.check` pinned for that host:port instead (the first that answers), and
refuses a host:port that was never checked. The URL, the Host header and TLS (SNI and the certificate
check) keep the host name, so HTTPS works as usual while the name is never looked up a second time.

Time: httpx's timeout bounds each read, so a server that drips a byte just inside it keeps a request
open forever. `deadline(seconds)` bounds the whole request: every socket operation gets at most the
time left, and one that runs out marks the deadline as hit, so the caller can say why it stopped.
"""

from __future__ import annotations

import contextlib
import ssl
import time
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpcore
import httpx

from tasks.sources.addresses import AddressGuard

T = typing.TypeVar("T")
_TimeoutError = type[httpcore.TimeoutException]


class Deadline:
    """The end of one request in monotonic time (None: unbounded); `hit` once an operation ran into it."""

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds
        self.hit = False

    def run(self, op: Callable[[float | None], T], timeout: float | None, error: _TimeoutError) -> T:
        """`op(timeout)` with the timeout cut to the time left; raises `error` once no time is left."""
        if self.end is None:
            return op(timeout)
        left = self.end - time.monotonic()
        if left <= 0:
            self.hit = True
            raise error("the request's total deadline passed")
        by_deadline = timeout is None or left < timeout
        try:
            return op(left if by_deadline else timeout)
        except httpcore.TimeoutException:
            self.hit = self.hit or by_deadline
            raise


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every operation ends by the backend's current deadline."""

    def __init__(self, inner: httpcore.NetworkStream, backend: PinnedBackend) -> None:
        self.inner, self.backend = inner, backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.backend.current.run(
            lambda t: self.inner.read(max_bytes, t), timeout, httpcore.ReadTimeout
        )

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.backend.current.run(lambda t: self.inner.write(buffer, t), timeout, httpcore.WriteTimeout)

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self.backend.current.run(
            lambda t: self.inner.start_tls(ssl_context, server_hostname, t), timeout, httpcore.ConnectTimeout
        )
        return _DeadlineStream(tls, self.backend)

    def get_extra_info(self, info: str) -> typing.Any:
        return self.inner.get_extra_info(info)


class PinnedBackend(httpcore.SyncBackend):
    """Connects to the address the guard pinned for a host:port; one request at a time (one fetcher)."""

    def __init__(self, guard: AddressGuard) -> None:
        self.guard = guard
        self.current = Deadline(None)

    @contextmanager
    def deadline(self, seconds: float) -> Iterator[Deadline]:
        """Bound every socket operation inside the block to end `seconds` from now."""
        self.current = Deadline(seconds)
        try:
            yield self.current
        finally:
            self.current = Deadline(None)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self.guard.pinned(host, port)
        if not addresses:
            raise httpcore.ConnectError(f"{host}:{port} was not checked; refusing to connect")
        *others, last = addresses  # tried in resolver order, as socket.create_connection does
        for address in others:
            with contextlib.suppress(httpcore.ConnectError):
                return self._connect(address, port, timeout, local_address, socket_options)
        return self._connect(last, port, timeout, local_address, socket_options)

    def _connect(
        self, address: str, port: int, timeout: float | None, *options: typing.Any
    ) -> _DeadlineStream:
        connect = super().connect_tcp
        stream = self.current.run(
            lambda t: connect(address, port, t, *options), timeout, httpcore.ConnectTimeout
        )
        return _DeadlineStream(stream, self)


class PinnedTransport(httpx.HTTPTransport):
    """httpx's own transport (request/response mapping, errors) over a pool that uses `backend`.

    httpx has no public hook for the network backend, so the pool it built is replaced by an identical
    one that has it. Proxies from the environment are not used: a proxy would connect on its own.
    """

    def __init__(self, backend: PinnedBackend) -> None:
        ssl_context = httpx.create_ssl_context(trust_env=False)  # loading the CA bundle is the slow part
        super().__init__(verify=ssl_context, trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context,
            keepalive_expiry=httpx.Limits().keepalive_expiry,
            network_backend=backend,
        )
