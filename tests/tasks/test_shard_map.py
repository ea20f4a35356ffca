"""Per-shard jobs give the same results in order whether run here or as Prefect task runs."""

from __future__ import annotations

from prefect import flow

from tasks.shard_map import serial_map, task_map


def square(job: int) -> int:
    return job * job


def test_task_map_runs_each_job_as_a_task_in_order(prefect_harness: None) -> None:
    @flow
    def squares(jobs: list[int]) -> list[int]:
        return task_map(square, jobs)

    jobs = list(range(7, 0, -1))
    assert squares(jobs) == serial_map(square, jobs) == [j * j for j in jobs]
    assert squares([]) == []
