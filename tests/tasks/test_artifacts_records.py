"""Cache records and reused artifacts for real: a tampered record runs nothing, damaged folders rebuild.

One tiny build under Prefect's harness, then the damage, then one re-run that must repair everything:

- preprocess: its cache record files are replaced by a pickle whose loading would create a marker file;
- tokenizer: one byte of `tokenizer.model` flipped;
- encode: its folder deleted (a cache hit on a vanished folder).

The re-run must not create the marker, must run those three phases again (the intact preprocess folder is
reused, the others are rebuilt) and must still find train and evaluate cached.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
from prefect.serializers import PickleSerializer
from prefect.settings import get_current_settings

from flows.build import build
from tasks.storage.artifacts import MANIFEST, Artifact, verify
from tests.flows.helpers import task_states, tiny_config

pytestmark = pytest.mark.slow


class CreatesMarker:
    """Unpickling this calls open(marker, "w"): any code at all would run the same way."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _record_files(phase: str, root_id: str) -> list[Path]:
    """Every file Prefect keeps for a phase's cache key (`<phase>-<fingerprint>-<root id>`): the record,
    or its result and its metadata."""
    storage = Path(get_current_settings().results.local_storage_path).expanduser()
    return [p for p in storage.rglob(f"{phase}-*-{root_id}") if p.is_file()]


def _poison(phase: str, root_id: str, marker: Path) -> int:
    files = _record_files(phase, root_id)
    record = ResultRecord(
        metadata=ResultRecordMetadata(serializer=PickleSerializer(), storage_key=str(files[0])),
        result=CreatesMarker(marker),
    )
    payload = record.serialize()  # the record format Prefect writes, with a pickle as the result
    for path in files:
        path.write_bytes(payload)
    return len(files)


def _run(cfg):
    state = build(config=cfg, return_state=True)
    assert state.is_completed(), state
    return state.result(), task_states(state.state_details.flow_run_id)


def test_tampered_record_runs_nothing_and_damaged_artifacts_are_rebuilt(
    prefect_harness, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    cfg = tiny_config(root)
    first, _ = _run(cfg)
    fps = first["fingerprints"]
    root_id = (root / ".root-id").read_text().strip()

    marker = tmp_path / "pickle-ran"
    assert _poison("preprocess", root_id, marker) >= 1
    model_file = root / "tokenizer" / fps["tokenizer"] / "tokenizer.model"
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    model_file.write_bytes(bytes(data))
    encode_dir = root / "encode" / fps["encode"]
    for path in sorted(encode_dir.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    encode_dir.rmdir()

    second, states = _run(cfg)

    assert not marker.exists(), "a cache record was unpickled"
    assert second["fingerprints"] == fps
    assert {p: states[p] for p in ("preprocess", "train-tokenizer", "encode")} == dict.fromkeys(
        ("preprocess", "train-tokenizer", "encode"), "Completed"
    ), states
    assert states["train"] == states["evaluate"] == "Cached", states
    for phase in ("preprocess", "tokenizer", "encode"):
        manifest = root / phase / fps[phase] / MANIFEST
        verify(Artifact.model_validate_json(manifest.read_text()))  # raises if still damaged
    # the records written by the re-run are JSON all through, never a pickle
    for path in _record_files("encode", root_id):
        text = path.read_text()
        assert "pickle" not in text
        json.loads(text)
