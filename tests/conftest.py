"""Shared fixtures. `SHARED_CORPUS` is the optional real corpus beside the repo (absent on a fresh clone)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "ai_wiki_dev.jsonl"


@pytest.fixture
def shared_corpus() -> Path:
    if not SHARED_CORPUS.is_file():
        pytest.skip(f"needs the real corpus at {SHARED_CORPUS} (not part of the repo)")
    return SHARED_CORPUS
