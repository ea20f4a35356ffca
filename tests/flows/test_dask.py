"""`dask.enabled`: the data phases' shards run as Prefect task runs on a Dask cluster's workers.

Each phase's task stays in the flow's process; what reaches the cluster is `shard` task runs (prefect-dask
names them by the task function, `_run_shard`), one per job. The results are the same as without Dask.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect import flow

from flows.build import cluster_kwargs, data_runner, run_data, worker_settings
from flows.config import DaskConfig
from tasks.collect import CollectConfig
from tasks.corpus_sample import document_paths
from tasks.shard_map import task_map
from tasks.storage.artifacts import Artifact, load_artifact, publish
from tasks.storage.shards import ShardWriter
from tasks.tokenizer import TokenizerConfig, run_encode, run_tokenizer
from tests.flows.helpers import tiny_config

pytestmark = pytest.mark.slow
distributed = pytest.importorskip("distributed", reason="the dask extra (prefect-dask) is not installed")

SHARD_TASK = "_run_shard"
SMALL_WORKERS = DaskConfig(enabled=True, n_workers=2, memory_limit="1GiB")
# Collect's shard size, where collect writes shards (the collect branch): small, for several shards.
TINY_SHARDS = ("collect.shard_mb=0.2",) if "shard_mb" in CollectConfig.model_fields else ()
LOOPBACK_ANY_PORT = "127.0.0.1:0"  # the scheduler's HTTP endpoint, on loopback only


def local_cluster() -> distributed.LocalCluster:
    """Two worker processes as the config sizes them, with Dask's settings as they stand."""
    return distributed.LocalCluster(
        **cluster_kwargs(SMALL_WORKERS), processes=True, dashboard_address=LOOPBACK_ANY_PORT
    )


def two_workers() -> distributed.LocalCluster:
    with worker_settings(SMALL_WORKERS):
        return local_cluster()


def test_workers_keep_glibcs_adaptive_malloc() -> None:
    """Dask's nanny would set MALLOC_TRIM_THRESHOLD_, which halves the shard jobs' speed."""

    def trim_threshold() -> str | None:
        import os

        return os.environ.get("MALLOC_TRIM_THRESHOLD_")

    with two_workers() as cluster, distributed.Client(cluster) as client:
        assert set(client.run(trim_threshold).values()) == {None}
    # Dask's own settings, so the check above can fail
    with local_cluster() as cluster, distributed.Client(cluster) as client:
        assert set(client.run(trim_threshold).values()) == {"65536"}


def where_ran(stream: distributed.get_task_stream) -> Counter[tuple[str, str]]:
    """(task prefix, worker) -> tasks, from the scheduler's record of every task that ran."""
    return Counter((str(r["key"]).rsplit("-", 1)[0].strip("('"), r["worker"]) for r in stream.data)


def kept_documents(clean: Artifact) -> list[tuple[str, str]]:
    tables = [pq.read_table(p, columns=["doc_id", "text"]) for p in document_paths(clean)]
    return [
        (d, t) for tb in tables for d, t in zip(tb["doc_id"].to_pylist(), tb["text"].to_pylist(), strict=True)
    ]


def test_the_local_cluster_gets_its_memory_from_the_config() -> None:
    cfg = tiny_config(Path("unused"), "dask.enabled=true", "dask.memory_limit=3GiB", "dask.n_workers=3")
    runner = data_runner(cfg).task_runner
    assert runner.cluster_kwargs == {"n_workers": 3, "threads_per_worker": 1, "memory_limit": "3GiB"}
    assert data_runner(tiny_config(Path("unused"))).task_runner.__class__.__name__ != "DaskTaskRunner"


def test_the_data_flow_on_two_workers_gives_what_it_gives_without_dask(
    prefect_harness, tmp_path: Path
) -> None:
    with two_workers() as cluster:
        address = f"dask.address={cluster.scheduler_address}"
        cfg = tiny_config(tmp_path / "dask", "dask.enabled=true", address, *TINY_SHARDS)
        with distributed.Client(cluster) as client, distributed.get_task_stream(client) as stream:
            on_dask = run_data(cfg, str(tmp_path / "dask"))
        ran = where_ran(stream)
    prefixes = {prefix for prefix, _ in ran}
    # the phases' own tasks stayed in the flow's process; their jobs (tokenizer, encode shards) did not
    assert prefixes == {SHARD_TASK}, ran
    assert sum(ran.values()) >= 1 + len(document_paths(on_dask.clean))
    if TINY_SHARDS:  # collect writes shards, so collect and preprocess map jobs too: enough for both workers
        assert len({worker for _, worker in ran}) == 2, ran
    assert load_artifact(tmp_path / "dask", "encode", on_dask.tokens.fingerprint) == on_dask.tokens

    local_cfg = tiny_config(tmp_path / "local", *TINY_SHARDS)
    local = run_data(local_cfg, str(tmp_path / "local"))
    phases = ("raw", "clean", "tokenizer", "tokens")
    assert [getattr(local, p).fingerprint for p in phases] == [
        getattr(on_dask, p).fingerprint for p in phases
    ]
    assert kept_documents(local.clean) == kept_documents(on_dask.clean)
    assert local.tokens.files == on_dask.tokens.files  # the same token shards, byte for byte


def sharded_clean(root: Path, n_docs: int = 48, rows_per_shard: int = 6) -> Artifact:
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)[:n_docs]]
    schema = pa.schema([("doc_id", pa.string()), ("text", pa.string())])

    def build(out: Path) -> None:
        with ShardWriter(out, "documents", schema, max_bytes=1, row_group_rows=rows_per_shard) as w:
            w.write_rows({"doc_id": f"doc-{i}", "text": t} for i, t in enumerate(texts))

    return publish(root, "preprocess", f"sharded-{n_docs}-{rows_per_shard}", build)


@flow(name="encode-on-dask")
def encode_flow(clean: Artifact, tokenizer: Artifact, root: str) -> Artifact:
    return run_encode(TokenizerConfig(vocab_size=400, num_threads=1), clean, tokenizer, root, mapper=task_map)


def test_encode_shards_spread_over_both_workers(prefect_harness, tmp_path: Path) -> None:
    from prefect_dask import DaskTaskRunner

    clean = sharded_clean(tmp_path / "dask")
    cfg = TokenizerConfig(vocab_size=400, num_threads=1)
    tokenizer = run_tokenizer(cfg, clean, tmp_path / "dask")
    with two_workers() as cluster:
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        with distributed.Client(cluster) as client, distributed.get_task_stream(client) as stream:
            tokens = encode_flow.with_options(task_runner=runner)(clean, tokenizer, str(tmp_path / "dask"))
        workers = {w for prefix, w in where_ran(stream) if prefix == SHARD_TASK}
        assert sum(n for (prefix, _), n in where_ran(stream).items() if prefix == SHARD_TASK) == 8
        assert workers == set(cluster.scheduler_info["workers"])  # both workers encoded shards

    serial_clean = sharded_clean(tmp_path / "serial")
    serial = run_encode(
        cfg, serial_clean, run_tokenizer(cfg, serial_clean, tmp_path / "serial"), tmp_path / "serial"
    )
    assert serial.fingerprint == tokens.fingerprint and serial.files == tokens.files
