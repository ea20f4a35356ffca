"""Progress saved as it goes: append-only JSON-lines files in a work folder.

A collection that is interrupted (a crash, a Prefect retry, a killed worker) finds here what it had
already searched and fetched and carries on from there. Each record is one line written and flushed
on its own, so a crash can at worst leave one torn last line, which reading skips.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tinyllama_model.files import atomic_write

STARTED = "started.json"


class ProgressLog:
    """Named JSONL streams in `folder`; with `folder=None` it remembers nothing (no resume)."""

    def __init__(self, folder: Path | None, *, max_age_s: float | None = None) -> None:
        self.folder = folder
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        stamp = folder / STARTED
        if stamp.is_file() and max_age_s is not None:
            started = _started_at(stamp)
            if started is None or time.time() - started > max_age_s:
                # Too old to trust (or of unknown age): the world it recorded has moved on. Start afresh.
                for path in folder.glob("*.jsonl"):
                    path.unlink()
                stamp.unlink(missing_ok=True)
        if not stamp.is_file():  # written whole or not at all: a crash never leaves an empty stamp
            atomic_write(stamp, json.dumps({"started": time.time()}))

    def append(self, name: str, record: dict[str, Any]) -> None:
        if self.folder is None:
            return
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open(self.folder / f"{name}.jsonl", "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read(self, name: str) -> list[dict[str, Any]]:
        return list(self.iter(name))

    def iter(self, name: str) -> Iterator[dict[str, Any]]:
        """The records of stream `name` in the order written, one line in memory at a time."""
        if self.folder is None:
            return
        path = self.folder / f"{name}.jsonl"
        if not path.is_file():
            return
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line from an interrupted write


def _started_at(stamp: Path) -> float | None:
    """When the work in the folder began; None for a stamp that is empty or torn (an older writer's crash)."""
    try:
        started = json.loads(stamp.read_text()).get("started")
    except (ValueError, AttributeError):
        return None
    return started if isinstance(started, (int, float)) else None
