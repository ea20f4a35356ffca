"""Servers and workers that tests start as subprocesses: wait for them, and stop them, on a busy machine.

No test depends on wall-clock speed: waits poll up to deadlines of minutes (CI may share 2 cores with
other work), and a process group that ignores SIGTERM past its grace is killed rather than failing the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

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
    stop_groups([proc], grace_s)


def stop_groups(procs: list[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
    """`stop_group` for several at once: they share one grace period (a lingering Prefect worker can take
    all of it), so stopping a whole stack never waits longer than stopping one process."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):  # it may have exited since poll()
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# -- processes by family and by environment (Linux /proc) --------------------------------------------------


def children(pid: int) -> list[int]:
    """The direct children of `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the name may hold spaces
        except (OSError, IndexError, ValueError):
            continue
        if parent == pid:
            found.append(int(stat.parent.name))
    return found


def kill_by_environment(name: str, value: str) -> list[int]:
    """SIGKILL every process of this user whose environment has `name=value`; returns their pids.

    For what outlives a stopped process group: Prefect starts each flow run in a session of its own, so a
    flow run whose worker is gone keeps running unless something finds it by what it inherited.
    """
    marker = f"{name}={value}".encode()
    killed = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        pid = int(environ.parent.name)
        try:
            if pid != os.getpid() and marker in environ.read_bytes().split(b"\0"):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        except OSError:  # another user's process, or one that just ended
            continue
    return killed
