"""The progress line: throttled in logs, and durations a person reads at a glance."""

from __future__ import annotations

import io
import logging
import math

from tinyllama_model.training.progress import ProgressLine, format_duration


def test_progress_line_does_not_spam_non_tty_logs(caplog):
    line = ProgressLine(every_s=60.0, stream=io.StringIO())
    with caplog.at_level(logging.INFO, logger="tinyllama_model.training.progress"):
        for i in range(100):
            line.update(f"step {i}")
    assert [r.message for r in caplog.records] == ["step 0"]


def test_durations_read_as_minutes_or_hours():
    assert format_duration(65.9) == "1m05s"
    assert format_duration(3 * 3600 + 5 * 60) == "3h05m"
    assert format_duration(math.inf) == "?"
