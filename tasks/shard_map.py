"""Per-shard work, run where the flow's task runner puts it: in this process, on threads, or on Dask.

A phase over a large corpus is a plan (small, picklable jobs, one per shard), a function that does one
job and returns a small result (names, counts, never the data), and a finish that publishes the
artifact. The phase's own code calls `mapper(fn, jobs)` and never knows where the jobs ran:

- `serial_map` runs them one after the other here: plain Python, for tests and for callers outside a
  flow;
- `task_map` submits each job as a Prefect task run (`shard`), so inside a flow on a `DaskTaskRunner`
  they run on the cluster's workers, and the flow process holds only the jobs and their results.

`fn` must be a module-level function (Dask pickles it by reference) whose job and result are small.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from prefect import task, unmapped

J = TypeVar("J")
R = TypeVar("R")


class Mapper(Protocol):
    def __call__(self, fn: Callable[[J], R], jobs: Sequence[J], /) -> list[R]: ...


def serial_map(fn: Callable[[J], R], jobs: Sequence[J], /) -> list[R]:
    """Run every job here, in order."""
    return [fn(job) for job in jobs]


@task(name="shard", retries=1, retry_delay_seconds=2)
def _run_shard(fn: Callable[[Any], Any], job: Any) -> Any:
    return fn(job)


def task_map(fn: Callable[[J], R], jobs: Sequence[J], /) -> list[R]:
    """Run every job as a Prefect task run on the current flow's task runner; results in job order."""
    if not jobs:
        return []
    futures = _run_shard.with_options(name=fn.__name__).map(fn=unmapped(fn), job=list(jobs))
    return [future.result() for future in futures]
