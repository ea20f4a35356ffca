"""One retry policy for every network source: exponential backoff with jitter, and Retry-After honoured.

The caller says which errors are transient and where a server-requested wait is found; the policy
only decides how long to wait and when to give up. `sleep` is injectable so tests can record the
waits instead of spending them.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class RetryConfig(BaseModel):
    """How hard to try a request before recording it as failed."""

    retries: int = Field(5, ge=0, le=20, description="Retries after the first attempt for transient faults.")
    backoff_s: float = Field(
        1.0, ge=0, description="First backoff in seconds; doubles on every retry (before jitter)."
    )
    max_backoff_s: float = Field(60.0, ge=0, description="Ceiling of one backoff wait in seconds.")
    jitter: float = Field(
        0.5, ge=0, le=1, description="Random extra fraction of each backoff, so clients do not retry in step."
    )
    max_retry_after_s: float = Field(
        300.0,
        ge=0,
        description="Longest Retry-After wait honoured; a server asking for longer is waited this long.",
    )


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is always GMT; parsedate leaves "-0000" naive
        when = when.replace(tzinfo=timezone.utc)
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


class RetryPolicy:
    """Runs a call, retrying transient faults with backoff; re-raises the last error when exhausted."""

    def __init__(
        self,
        cfg: RetryConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.retried = 0  # total retries made, for the phase summary

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cfg.max_retry_after_s)
        base = min(self.cfg.backoff_s * 2 ** (attempt - 1), self.cfg.max_backoff_s)
        return base * (1 + self.cfg.jitter * self.rng.random())

    def call(
        self,
        fn: Callable[[], T],
        *,
        is_transient: Callable[[BaseException], bool],
        retry_after: Callable[[BaseException], float | None] = lambda _e: None,
        time_left: Callable[[], float] | None = None,
    ) -> T:
        """`fn()`, retried; with `time_left` (seconds of the caller's budget), no wait outlasts the budget."""
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as err:
                attempt += 1
                if attempt > self.cfg.retries or not is_transient(err):
                    raise
                wait = self.delay(attempt, retry_after(err))
                if time_left is not None and wait >= time_left():
                    raise
                self.retried += 1
                self.sleep(wait)
