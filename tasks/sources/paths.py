"""Which files `collect.local.paths` names: files, folders (read recursively) and glob patterns.

Folders and `**` follow symbolic links, as `glob` does, but each real folder is read once: a link back
up the tree is not followed again. `glob.glob` follows such a loop until the path is too long, and two
loop links make that 2^40 paths; here the walk ends, and finds every file once. Otherwise patterns keep
`glob`'s rules: `*`, `?` and `[...]` stay inside one path component, `**` spans any number of them, and
wildcards skip names that start with a dot unless the pattern's component does too.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from tinyllama_model.errors import ConfigError

_MAGIC = re.compile(r"[*?[]")


def walk_files(root: Path) -> Iterator[Path]:
    """Every file below `root`, links followed, each real folder entered once (so loops end)."""
    top = os.stat(root)
    seen = {(top.st_dev, top.st_ino)}
    for folder, dirs, names in os.walk(root, followlinks=True):
        for name in list(dirs):
            try:
                st = os.stat(os.path.join(folder, name))
            except OSError:  # vanished, or a link to nowhere
                dirs.remove(name)
                continue
            if (st.st_dev, st.st_ino) in seen:
                dirs.remove(name)
            else:
                seen.add((st.st_dev, st.st_ino))
        for name in names:
            path = Path(folder, name)
            if path.is_file():
                yield path


def _matches(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Whether the path components `parts` match the pattern components, by glob's rules."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        for taken in range(len(parts) + 1):
            if taken and parts[taken - 1].startswith("."):
                return False
            if _matches(parts[taken:], rest):
                return True
        return False
    if not parts or (parts[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], head) and _matches(parts[1:], rest)


def glob_files(pattern: str) -> list[Path]:
    """The files matching `pattern`, sorted; `**` is walked by `walk_files`, so loops end."""
    if "**" not in pattern:  # no recursion: glob reads a bounded number of folders
        return [Path(p) for p in sorted(glob.glob(pattern)) if Path(p).is_file()]
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if _MAGIC.search(part))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    if not root.is_dir():
        return []
    found = (p for p in walk_files(root) if _matches(p.relative_to(root).parts, parts[fixed:]))
    return sorted(found, key=str)


def expand_paths(patterns: list[str], suffixes: Sequence[str]) -> list[Path]:
    """Files named by paths, folders (their files with `suffixes`) and globs, sorted, each once.

    A pattern matching nothing is a ConfigError.
    """
    files: dict[Path, None] = {}
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            matches = sorted(p for p in walk_files(path) if p.suffix.lower() in suffixes)
        elif path.is_file():
            matches = [path]
        else:
            matches = glob_files(str(path))
        if not matches:
            raise ConfigError(
                f"collect.local.paths entry {pattern!r} matches no file: name an existing file, folder, glob"
            )
        files.update(dict.fromkeys(matches))
    return list(files)
