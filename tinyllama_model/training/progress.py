"""The one progress line a training run shows: redrawn in place on a terminal, throttled log lines elsewhere.

It knows text and time only; the trainer decides what the line says.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import TextIO

log = logging.getLogger(__name__)


class ProgressLine:
    """One progress line: rewritten in place on a TTY, else a log line every `every_s` seconds (no spam)."""

    def __init__(self, every_s: float, stream: TextIO | None = None, enabled: bool = True):
        self.stream = stream or sys.stderr
        self.tty = enabled and self.stream.isatty()
        self.enabled = enabled
        self.every_s = 0.2 if self.tty else every_s
        self.last = -math.inf

    def update(self, text: str, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < self.every_s):
            return
        self.last = now
        if self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
        else:
            log.info(text)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + "\n")
            self.stream.flush()
        else:
            log.info(text)

    def close(self) -> None:
        if self.tty and self.enabled:
            self.stream.write("\n")


def format_duration(s: float) -> str:
    """12m05s, or 1h02m from an hour on; "?" for an unknown (infinite) time."""
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
