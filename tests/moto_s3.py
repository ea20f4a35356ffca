"""A real S3-compatible server on loopback for the object-store tests: moto's server mode.

Nothing is patched in-process: s3fs talks HTTP to moto exactly as it would to S3, with the endpoint and
dummy credentials taken from the environment the way a deployment sets them (`AWS_ENDPOINT_URL`, ...).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def s3_server() -> Iterator[str]:
    """Start moto's S3 on 127.0.0.1 (a free port); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def use_s3(mp: pytest.MonkeyPatch, endpoint: str, cache: Path) -> str:
    """Point this process at `endpoint` through the environment, create a bucket; returns a data root URL."""
    import s3fs

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "FSSPEC_S3_ENDPOINT_URL"):
        mp.delenv(name, raising=False)
    mp.setenv("AWS_ACCESS_KEY_ID", "testing")
    mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    mp.setenv("AWS_CONFIG_FILE", str(cache / "no-aws-config"))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(cache / "no-aws-credentials"))
    mp.setenv("TINYLLAMA_CACHE", str(cache))
    s3fs.S3FileSystem.clear_instance_cache()  # an instance made for another endpoint must not be reused
    bucket = f"tinyllama-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem().mkdir(bucket)
    return f"s3://{bucket}/data"


def use_memory(mp: pytest.MonkeyPatch, cache: Path) -> str:
    """A data root on fsspec's in-process memory filesystem, in a bucket of its own; returns its URL.

    It lists keys with a leading '/', where s3fs lists none: the store code must handle both.
    """
    mp.setenv("TINYLLAMA_CACHE", str(cache))
    return f"memory://bucket-{uuid.uuid4().hex[:10]}/data"
