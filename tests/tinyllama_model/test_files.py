"""A file written through `atomic_path` appears whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinyllama_model.files import atomic_path, atomic_write


def test_atomic_write_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "spec.json"
    atomic_write(path, "first")
    atomic_write(path, b"second")
    assert path.read_text() == "second"
    assert [p.name for p in path.parent.iterdir()] == ["spec.json"]


def test_an_error_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    atomic_write(path, "old")
    with pytest.raises(OSError), atomic_path(path, fsync=True) as tmp:
        tmp.write_text("half")
        raise OSError("disk full")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
