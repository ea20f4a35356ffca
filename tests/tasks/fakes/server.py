"""One loopback HTTP server per test module, its handler swapped per test (stopping one costs 0.5 s)."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pytest_httpserver import HTTPServer
from werkzeug import Request, Response


class Loopback:
    """A threaded server on 127.0.0.1 (a slow answer must not block the client's retry)."""

    def __init__(self) -> None:
        self.server = HTTPServer(host="127.0.0.1", port=0, threaded=True)

    def url(self, path: str = "") -> str:
        return self.server.url_for(path).rstrip("/") if not path else self.server.url_for(path)

    @contextmanager
    def serving(self, handler: Callable[[Request], Response]) -> Iterator[None]:
        """Answer every request with `handler`; an exception inside it fails the test afterwards."""
        self.server.clear()
        self.server.expect_request(re.compile(".*")).respond_with_handler(handler)
        yield
        self.server.check_handler_errors()


@contextmanager
def loopback() -> Iterator[Loopback]:
    lb = Loopback()
    lb.server.start()
    try:
        yield lb
    finally:
        if lb.server.is_running():
            lb.server.stop()


@contextmanager
def raw_socket_server(
    answer: Callable[[socket.socket, threading.Event], None], *, threaded: bool = False
) -> Iterator[int]:
    """A loopback TCP server below HTTP: `answer(conn, stop)` writes whatever bytes a test needs (a TLS
    handshake, a status line dripped byte by byte); yields the port and stops the thread afterwards.
    `threaded`: each connection is answered on its own thread, so one that stalls does not hold the next."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    workers: list[threading.Thread] = []

    def handle(conn: socket.socket) -> None:
        with conn:
            answer(conn, stop)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            if threaded:
                workers.append(threading.Thread(target=handle, args=(conn,), daemon=True))
                workers[-1].start()
            else:
                handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for worker in workers:
            worker.join()
        listener.close()
