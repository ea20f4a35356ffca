"""Names read from a store, a manifest or a listing, checked before any of them becomes a path here.

Manifests, store listings and model folders are written by whoever can write the shared bucket, so a name
found there is input, not a fact: `../../x`, `/etc/x` or `a\\..\\x` joined onto a local folder would write
or read outside it. Every such name goes through `checked_name` (the one rule: a relative POSIX name
without `..`, `.`, empty parts, backslashes or NUL) and every local target through `inside`, which also
resolves symlinks and refuses a target that lands outside its folder.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

UPLOAD_ID_HEX = 12  # random hex digits naming a prefix of our own making (an upload, a copy of best/)
UPLOAD_ID = re.compile(f"[0-9a-f]{{{UPLOAD_ID_HEX}}}")
_FORBIDDEN_PARTS = ("", ".", "..")


class UnsafeName(ValueError):
    """A file name from a manifest or a listing that could reach outside the folder it belongs to."""


def checked_name(name: object, what: str = "file name") -> str:
    """`name` if it is a relative POSIX name of a file inside a folder, else UnsafeName naming it."""
    if (
        not isinstance(name, str)
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(part in _FORBIDDEN_PARTS for part in name.split("/"))
    ):
        raise UnsafeName(
            f"{what} {name!r} is not a relative POSIX name (no leading '/', no '..', '.' or empty parts, "
            "no backslashes), so it could reach outside its folder: refused"
        )
    return name


def inside(folder: Path, name: str, what: str = "file name") -> Path:
    """The resolved path of `name` under `folder`, refused unless it stays inside `folder` (symlinks too)."""
    base = Path(folder).resolve()
    target = (base / checked_name(name, what)).resolve()
    if target == base or not target.is_relative_to(base):
        raise UnsafeName(f"{what} {name!r} resolves to {target}, outside {base}; refused")
    return target


def new_upload_id() -> str:
    """A fresh store prefix name that `UPLOAD_ID` accepts."""
    return uuid.uuid4().hex[:UPLOAD_ID_HEX]
