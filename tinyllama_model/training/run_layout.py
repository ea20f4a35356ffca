"""The run directory's names and its checkpoint listing, without torch.

Kept apart from `run_state` (which saves and loads training states with torch) so that the object-store
mirror, which the data phases import too, lists and names checkpoints without loading torch.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_DIR, BEST_DIR = "checkpoints", "best"
METRICS_FILE, RESULT_FILE, RUN_SPEC = "metrics.jsonl", "result.json", "run.json"


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary files of an interrupted save start with a dot)."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob("step-*.pt"), key=step_of)


def step_of(path: Path) -> int:
    """The step a checkpoint was written at, from its name (step-00000100.pt -> 100)."""
    return int(path.stem.split("-")[1])
