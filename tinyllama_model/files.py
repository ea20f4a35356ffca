"""Files that appear whole or not at all.

Every artifact, checkpoint, progress stamp and run spec is written to a temporary name beside its final
place and renamed onto it, so a process killed mid-write leaves the previous file (or none), never half
of one. This is the one place that dance is spelled out.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without an error, rename it onto `path`.

    The caller writes the temporary file however it likes (numpy, torch.save, a Parquet writer). On an
    error the temporary file is removed and `path` is untouched. `fsync` flushes the data to disk before
    the rename, for files a crash must not lose (checkpoints).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to `path` whole, through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
