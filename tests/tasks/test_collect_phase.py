"""run_collect as a phase: the artifact, its content fingerprint, the latest pointer, bad configs."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tasks.collect import (
    CollectConfig,
    config_fingerprint,
    previous_artifact,
    run_collect,
    summary_markdown,
)
from tasks.sources.document import DOCUMENT_SCHEMA, DOCUMENTS_TABLE
from tasks.sources.errors import InputError
from tinyllama_model.errors import ConfigError

OFFLINE = {"wikipedia": {"enabled": False}}


def test_builtin_collect_writes_the_documented_artifact(tmp_path):
    cfg = CollectConfig(builtin=True, **OFFLINE)
    artifact = run_collect(cfg, tmp_path)

    assert artifact.shards == {DOCUMENTS_TABLE: ["documents-00000.parquet"]}  # ~1 MB: one shard
    table = pq.read_table(artifact.shard_paths(DOCUMENTS_TABLE)[0])
    assert table.schema.equals(DOCUMENT_SCHEMA, check_metadata=False)
    assert table.num_rows == artifact.stats["documents"] > 100
    assert artifact.stats["per_source"] == {"builtin": table.num_rows}
    assert set(artifact.files) == {"documents-00000.parquet", "summary.json"}
    summary = json.loads(artifact.file("summary.json").read_text())
    assert summary["sources"] == ["builtin"]
    assert previous_artifact(tmp_path, cfg).fingerprint == artifact.fingerprint
    assert not list((tmp_path / "collect").glob(".work-*"))


def test_unchanged_content_gives_the_same_fingerprint(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("A local document with enough words to matter. " * 5)
    cfg = CollectConfig(builtin=True, local={"paths": [str(tmp_path / "in")]}, **OFFLINE)
    first = run_collect(cfg, tmp_path / "root")
    again = run_collect(cfg, tmp_path / "root")
    assert again.fingerprint == first.fingerprint and again.path == first.path
    # no source reads the last artifact (only Wikipedia does): it is not even looked for, or checked
    (tmp_path / "in" / "b.txt").write_text("A second document. " * 5)
    second = run_collect(cfg, tmp_path / "root")
    assert json.loads(second.file("summary.json").read_text())["previous"] is None

    (tmp_path / "in" / "a.txt").write_text("Changed text now. " * 5)
    changed = run_collect(cfg, tmp_path / "root")
    assert changed.fingerprint != first.fingerprint


def test_transport_settings_do_not_change_fingerprints():
    base = CollectConfig(builtin=True)
    tuned = base.model_copy(
        update={
            "user_agent": "someone/1.0 (a@b.org)",
            "wikipedia": base.wikipedia.model_copy(update={"concurrency": 2, "timeout_s": 5.0}),
        }
    )
    assert config_fingerprint(tuned) == config_fingerprint(base)
    other = base.model_copy(update={"wikipedia": base.wikipedia.model_copy(update={"topics": ["robotics"]})})
    assert config_fingerprint(other) != config_fingerprint(base)


def test_no_source_switched_on_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"collect\.builtin=true"):
        run_collect(CollectConfig(**OFFLINE), tmp_path)


def test_no_readable_local_document_is_an_input_error(tmp_path):
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02")
    with pytest.raises(InputError, match=r"bin\.txt looks binary"):
        run_collect(CollectConfig(local={"paths": [str(tmp_path / "bin.txt")]}, **OFFLINE), tmp_path)


def test_failures_reach_the_stats_and_the_markdown(tmp_path):
    (tmp_path / "good.md").write_text("Some good text here.")
    (tmp_path / "bad.txt").write_bytes("caf\xe9".encode("latin-1"))
    cfg = CollectConfig(local={"paths": [str(tmp_path / "*.*")]}, **OFFLINE)
    artifact = run_collect(cfg, tmp_path / "root")
    assert artifact.stats["failed"] == 1
    assert artifact.stats["failures"][0]["source"] == "local"
    markdown = summary_markdown(artifact.stats)
    assert "| local | 1 |" in markdown and "not UTF-8" in markdown
