"""Servers and workers that tests start as subprocesses: wait for them, and stop them, on a busy machine.

No test depends on wall-clock speed: waits poll up to deadlines of minutes (CI may share 2 cores with
other work), and a process group that ignores SIGTERM past its grace is killed rather than failing the test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable

import httpx

STARTUP_DEADLINE_S = 300.0  # a prefect/mlflow server imports for 10-40 s on 2 idle cores, minutes under load
STOP_GRACE_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    ready: Callable[[], bool], what: str, deadline_s: float = STARTUP_DEADLINE_S, alive=None
) -> None:
    """Poll `ready` until it is true; fail naming `what` past the deadline or when `alive()` says it died."""
    deadline = time.monotonic() + deadline_s
    while not ready():
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {deadline_s:.0f} s")
        time.sleep(0.5)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def stop_group(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the process group started with `start_new_session=True`; SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
