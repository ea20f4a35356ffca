"""SHA-256 of artifact files, hashed once per process for a file that has not changed since.

Reused artifacts are checked against their manifest's hashes on every reuse (a cache hit, a reused
folder, an input a phase is about to read). Within one process the same unchanged file is often checked
several times (the cache-hit check, then the phase that reads it); the digest is remembered under the
file's identity and change stamps (device, inode, size, mtime and ctime in ns), not its name, so a folder
renamed into place keeps its files' digests while a rewritten, replaced or touched file is hashed again.
`os.utime` cannot forge ctime, so only a change that also restores the ctime, which takes root and a clock
change, could slip past the memo; a new process always hashes afresh.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

_MEMO: dict[tuple[int, int, int, int, int], str] = {}
_MEMO_MAX = 4096
_LOCK = threading.Lock()


def _stamp(path: Path) -> tuple[int, int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (remembered for the unchanged file: see the module docstring)."""
    stamp = _stamp(path)
    with _LOCK:
        known = _MEMO.get(stamp)
    if known is not None:
        return known
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    if _stamp(path) == stamp:  # unchanged while we read it: safe to remember
        with _LOCK:
            if len(_MEMO) >= _MEMO_MAX:
                _MEMO.clear()
            _MEMO[stamp] = digest
    return digest
