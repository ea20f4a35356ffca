"""The data root: a local folder, or a folder on an object store named by an fsspec URL.

`data_root` is a path (`.tinyllama/data`, `/mnt/shared/tinyllama`, `file:///mnt/shared/tinyllama`) or an
object-store URL (`s3://bucket/prefix`, `gs://bucket/prefix`, any fsspec protocol that can write). A URL is
checked when the config is read: an unknown scheme, or a scheme whose fsspec backend is not installed, is
a `ConfigError` naming the package to install, never a local folder called `s3:`.

Phases build their files on local disk in either case (SentencePiece and the trainer need real files), so
every root has a local side, `DataRoot.local`: the folder itself for a local root; for an object store, a
cache folder of this machine keyed by the URL (`$TINYLLAMA_CACHE`, default `~/.cache/tinyllama`). What goes
to and comes from the store is decided in `tasks.storage.artifacts` and `tasks.storage.store_sync`; this
module only names places and moves small files.

Credentials and endpoints come from the environment the backend reads (`AWS_*` including
`AWS_ENDPOINT_URL`, `GOOGLE_APPLICATION_CREDENTIALS`, fsspec's `FSSPEC_S3_*`), never from the config, so no
secret ends up in a config, a fingerprint or the Prefect UI.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from tinyllama_model.errors import ConfigError
from tinyllama_model.files import atomic_write

CACHE_ENV = "TINYLLAMA_CACHE"
ROOT_ID = ".root-id"
# The pip extra of this project that installs each object-store backend.
EXTRAS = {"s3": ("s3", "s3fs"), "s3a": ("s3", "s3fs"), "gs": ("gcs", "gcsfs"), "gcs": ("gcs", "gcsfs")}
READ_ONLY = {"http", "https", "zip", "tar", "github", "gist", "libarchive", "data", "reference"}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://(.*)$")
_MANGLED = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/?([^/].*)?$")  # "s3:/bucket": a URL through Path()


def cache_home() -> Path:
    """Where object-store roots keep their local side: $TINYLLAMA_CACHE, else the user's cache folder."""
    if configured := os.environ.get(CACHE_ENV):
        return Path(configured).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(base) / "tinyllama").resolve()


@dataclass(frozen=True)
class DataRoot:
    """A parsed `data_root`: `url` is its normal form (an absolute path for a local root)."""

    url: str
    protocol: str  # "file" for a local root

    @classmethod
    def parse(cls, value: str | Path | DataRoot) -> DataRoot:
        if isinstance(value, DataRoot):
            return value
        text = str(value).strip()
        if not text:
            raise ConfigError("data_root is empty: give a folder or a URL such as s3://bucket/prefix")
        match = _URL.match(text)
        if match is None:
            _refuse_mangled_url(text)
            return cls(str(Path(text).expanduser().resolve()), "file")
        protocol, rest = match.group(1).lower(), match.group(2)
        if protocol in ("file", "local"):
            return cls(str(Path(rest).expanduser().resolve()), "file")
        _check_backend(text, protocol)
        if not rest.strip("/"):
            raise ConfigError(f"data_root {text!r} names no bucket: write {protocol}://bucket/prefix")
        return cls(f"{protocol}://{rest.rstrip('/')}", protocol)

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @cached_property
    def local(self) -> Path:
        """This machine's folder for the root: the root itself, or the object store's local cache."""
        if self.is_local:
            return Path(self.url)
        rest = self.url.split("://", 1)[1]
        readable = re.sub(r"[^A-Za-z0-9._-]+", "_", rest)[:60]
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:10]
        return cache_home() / "roots" / f"{self.protocol}-{readable}-{digest}"

    def url_of(self, *parts: str) -> str:
        return "/".join([self.url, *parts])

    # -- the object store (fsspec); a local root never reaches these ---------------------------------

    @property
    def fs(self) -> Any:
        """The fsspec filesystem of an object-store root, configured from the environment."""
        import fsspec

        return fsspec.filesystem(self.protocol)

    def key(self, *parts: str) -> str:
        """The fsspec path (no protocol) of `parts` under the root."""
        return "/".join([self.url.split("://", 1)[1], *parts])

    def read_bytes(self, *parts: str) -> bytes | None:
        """A small file under the root, or None when it does not exist."""
        if self.is_local:
            path = self.local.joinpath(*parts)
            return path.read_bytes() if path.is_file() else None
        try:
            return self.fs.cat_file(self.key(*parts))  # a direct GET: never a stale listing cache
        except FileNotFoundError:
            return None

    def write_bytes(self, *parts: str, data: bytes) -> None:
        """Write a small file whole: renamed into place locally; one PUT (atomic) on an object store."""
        if self.is_local:
            atomic_write(self.local.joinpath(*parts), data)
        else:
            self.fs.pipe_file(self.key(*parts), data)

    def remove_tree(self, *parts: str) -> None:
        """Delete a folder under an object-store root, if there is one."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.key(*parts), recursive=True)

    def identity(self) -> str:
        """A random id stored in the root on first use; a deleted and re-created root gets a new one.

        Prefect keeps its cache records outside the data root, so without this a root deleted by hand (or a
        fresh clone at the same path) would get cache hits whose artifacts no longer exist. Locally the id
        is created exclusively, so concurrent first tasks agree on it; on an object store two first writers
        may each see their own id once, which costs a cache miss, never a wrong hit.
        """
        if self.is_local:
            path = self.local / ROOT_ID
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(path, "x") as f:
                    f.write(uuid.uuid4().hex)
            except FileExistsError:
                pass
            return path.read_text().strip()
        found = self.read_bytes(ROOT_ID)
        if found is None:
            self.write_bytes(ROOT_ID, data=uuid.uuid4().hex.encode())
            found = self.read_bytes(ROOT_ID) or b""
        return found.decode().strip()


def _refuse_mangled_url(text: str) -> None:
    """`s3:/bucket/x` (a URL that went through Path(), or a typo) would become a local folder `s3:`."""
    match = _MANGLED.match(text)
    if match is None:
        return
    import fsspec

    if match.group(1).lower() in fsspec.available_protocols():
        raise ConfigError(
            f"data_root {text!r} looks like a URL without its '//': write "
            f"{match.group(1)}://{(match.group(2) or '').lstrip('/')} (or ./{text} for a local folder)"
        )


def _check_backend(text: str, protocol: str) -> None:
    """Fail at once, naming what to install, for a scheme fsspec does not know or cannot load here."""
    import fsspec

    if protocol not in fsspec.available_protocols():
        raise ConfigError(
            f"data_root {text!r}: unknown storage scheme {protocol!r}. Use a local folder, file:///path, "
            "s3://bucket/prefix (pip install 'tinyllama-pipeline[s3]') or gs://bucket/prefix "
            "(pip install 'tinyllama-pipeline[gcs]')"
        )
    if protocol in READ_ONLY:
        raise ConfigError(
            f"data_root {text!r}: {protocol}:// is read-only; the pipeline writes its artifacts there"
        )
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as err:
        extra, package = EXTRAS.get(protocol, (None, None))
        fix = (
            f"pip install 'tinyllama-pipeline[{extra}]' (or pip install {package})"
            if extra
            else f"install fsspec's backend for {protocol}:// ({err})"
        )
        raise ConfigError(f"data_root {text!r} needs a backend that is not installed: {fix}") from err
