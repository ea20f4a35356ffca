"""The README's pictures exist and stay small enough to keep in the repository."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_BYTES = 300 * 1024


def test_every_picture_the_readme_shows_is_committed_and_small() -> None:
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", (REPO / "README.md").read_text())
    assert pictures, "the README shows the UIs (docs/screenshots.py takes the pictures)"
    sizes = {p: (REPO / p).stat().st_size if (REPO / p).is_file() else None for p in pictures}
    assert all(size is not None and size <= MAX_BYTES for size in sizes.values()), sizes
