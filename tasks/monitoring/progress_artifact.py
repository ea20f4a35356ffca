"""A progress bar in the Prefect UI: a progress artifact of a task run, moved on whole percents.

A phase that knows how far it is (training: the share of its budget; collection: pages fetched out of
pages planned) shows it under the run's Artifacts while it runs. It moves only when the whole percent
changes, so a phase that reports on every step or page sends at most ~100 updates to the Prefect API.
A bar is a view: an API that refuses it costs one warning, never the phase.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

log = logging.getLogger(__name__)


def whole_percent(fraction: float) -> int:
    """0..100, rounded down, so the bar reads 100 only when the work is done."""
    return math.floor(100 * min(max(fraction, 0.0), 1.0))


class ProgressBar:
    """One progress artifact; call inside a Prefect task run (it belongs to that run)."""

    def __init__(self, key: str, description: str, warn: Callable[[str], None] = log.warning) -> None:
        self.key, self.warn = key, warn
        self.id: UUID | None = None
        self.percent = 0
        try:
            self.id = create_progress_artifact(0.0, key=key, description=description)
        except Exception as err:  # see the module docstring
            self._give_up(err)

    def update(self, fraction: float, description: str | None = None) -> None:
        percent = whole_percent(fraction)
        if self.id is None or percent == self.percent:
            return
        try:
            update_progress_artifact(self.id, float(percent), description=description)
            self.percent = percent
        except Exception as err:  # see the module docstring
            self._give_up(err)

    def _give_up(self, err: Exception) -> None:
        self.id = None
        self.warn(f"progress artifact {self.key!r} stopped: {err}")


class PagesBar:
    """Pages done out of pages planned, summed over the sources that reported (the collect phase's bar).

    A source's plan counts from its first report, so the bar may step back when a later source announces
    its pages; it reads 100 only when every announced page is done.
    """

    def __init__(self, bar: ProgressBar) -> None:
        self.bar = bar
        self.counts: dict[str, tuple[int, int]] = {}

    def __call__(self, source: str, done: int, planned: int) -> None:
        self.counts[source] = (done, planned)
        done_all = sum(d for d, _ in self.counts.values())
        planned_all = sum(p for _, p in self.counts.values())
        fraction = done_all / planned_all if planned_all else 1.0
        self.bar.update(fraction, f"{done_all:,} of {planned_all:,} pages fetched")
