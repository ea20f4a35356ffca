"""The README stays a user's guide: short, with the sections a newcomer looks for, and links that resolve.

Measurements and tuning history belong in docs/ (benchmarks.md, tuning-log.md), not here.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAX_WORDS = 2500  # `wc -w README.md`
REQUIRED_SECTIONS = (
    "What it is",
    "Quick start",
    "Configuration and presets",
    "The command line",
    "What the model predicts with",
    "Running it as a service",
    "What you see",
    "Scaling out",
    "Building from a Wikipedia dump",
    "Python API",
    "Development",
    "Troubleshooting",
    "Security notes",
    "Benchmarks",
)
MIXTURE_MAX_WORDS = 150
LINK = re.compile(r"\]\(([^)\s]+)\)")


def sections(text: str) -> dict[str, str]:
    """Level-2 heading -> the text under it, up to the next level-2 heading."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_is_at_most_2500_words() -> None:
    words = len(README.read_text().split())
    assert words <= MAX_WORDS, f"README.md has {words} words; move detail to docs/ (limit {MAX_WORDS})"


def test_the_readme_has_every_section_a_user_needs() -> None:
    missing = [name for name in REQUIRED_SECTIONS if name not in sections(README.read_text())]
    assert not missing, f"README.md lacks the sections {missing}"


def test_the_mixture_is_told_in_at_most_150_words() -> None:
    words = len(sections(README.read_text())["What the model predicts with"].split())
    assert words <= MIXTURE_MAX_WORDS, f"the mixture takes {words} words; its details go in docs/mixture.md"


def test_every_relative_link_of_the_readme_and_docs_resolves() -> None:
    broken = []
    for page in [README, *sorted((REPO / "docs").glob("*.md"))]:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto: not checked offline
            path, _, fragment = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif fragment and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.MULTILINE)
                if fragment not in {anchor(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
