"""The register phase against a real MLflow: a SQLite store in a temporary folder, real tiny models.

End to end through the modules it orders (tasks.tracking.mlflow_run, run_reports, model_versions, champion)
and
back out through tasks.tracking.model_refs; their store-free parts are tested beside them (test_mlflow_run.py,
test_run_reports.py, test_mlflow_store.py, test_model_refs.py).

One store serves the whole module (creating its tables takes seconds); tests that need a clean
registry use their own model and experiment names.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from tasks.monitoring.live_metrics import MetricsStream
from tasks.register import RegisterConfig, run_register
from tasks.storage.artifacts import Artifact, publish, sha256_file
from tasks.tracking.champion import promote_if_better
from tasks.tracking.mlflow_run import RunRef, finish_pipeline_run, log_metrics_batched, start_pipeline_run
from tasks.tracking.mlflow_store import resolve_store
from tasks.tracking.model_refs import MODEL_FILES, ModelDirError, resolve_model_dir
from tasks.tracking.run_reports import read_jsonl
from tests.factories import TINY_VOCAB, make_model_dir, train_tiny_tokenizer
from tests.mlflow_globals import mlflow_globals_kept
from tests.processes import answers, free_port, stop_group, wait_until
from tinyllama_model import TinyLlama
from tinyllama_model.mixture.corpus_ngrams import CORPUS_FILE, CorpusNgrams

REPO = Path(__file__).resolve().parents[2]


# -- fixtures: a store, tokenizer, and train/evaluate artifacts as the upstream phases publish them -----


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with mlflow_globals_kept():  # register points MLflow's globals at its store; undo that
        yield tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def train_artifact(root: Path, tokenizer_file: Path, seed: int, final_bpb: float) -> Artifact:
    """A train artifact like tasks/train.py publishes: model/ plus metrics.jsonl (train and val rows)."""

    def build(out: Path) -> dict:
        make_model_dir(out / "model", tokenizer_file, seed=seed)
        rows = []
        for step in range(1, 41):
            rows.append({"step": step, "train_loss": 6.0 - 0.05 * step, "lr": 1e-3, "tokens_per_s": 900.0})
            if step % 10 == 0:
                rows.append(
                    {"step": step, "val_loss": 6.2 - 0.05 * step, "val_bpb": final_bpb + 0.01 * (40 - step)}
                )
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 41, "tra')
        return {"steps": 40, "best_val_bpb": final_bpb, "params": 12345}

    return publish(root, "train", f"train-{seed}", build)


def eval_artifact(root: Path, name: str, bpb: float) -> Artifact:
    def build(out: Path) -> dict:
        metrics = {"loss": 1.7, "perplexity": 5.5, "bpb": bpb, "tokens": 1000, "bytes": 4000}
        (out / "metrics.json").write_text(json.dumps(metrics))
        (out / "samples.json").write_text(json.dumps({"The future of AI is": " learned."}))
        return metrics

    return publish(root, "evaluate", f"eval-{name}", build)


@pytest.fixture(scope="module")
def champion(root: Path, tokenizer_file: Path) -> dict:
    """The first pipeline run: model A (val bpb 2.0) registered as version 1 of `tinyllama`."""
    cfg = RegisterConfig()
    params = {"train": {"lr": 1e-3, "betas": [0.9, 0.95]}, "collect": {"topics": ["ai"] * 2000}}
    run_id = start_pipeline_run(cfg, root, params, {"data_fingerprint": "data-fp-1"})
    model = train_artifact(root, tokenizer_file, seed=1, final_bpb=2.0)
    evaluation = eval_artifact(root, "a", bpb=2.0)

    def preprocess_report(out: Path) -> dict:
        by_source = {"builtin": {"in": 8, "rejected": 1, "rows_out": 7}, "web": {"in": 4, "rejected": 1}}
        (out / "report.json").write_text(json.dumps({"kept": 10, "by_source": by_source}))
        (out / "documents.parquet").write_bytes(b"PAR1")  # data tables are never logged as reports
        return {"kept": 10, "documents_kept": 10}

    def encode_report(out: Path) -> dict:
        (out / "train.parquet").write_bytes(b"PAR1")
        return {"train_tokens": 9000, "train_docs": 9, "val_tokens": 1000, "val_docs": 1, "vocab_size": 512}

    report = publish(root, "preprocess", "pp", preprocess_report)
    reports = {
        "data": report,
        "tokenizer": tokenizer_file,
        "tokens": publish(root, "encode", "enc", encode_report),
    }
    result = run_register(cfg, model, evaluation, reports, run_id, root)
    return {"cfg": cfg, "run_id": run_id, "model": model, "evaluation": evaluation, "result": result}


# -- the pipeline run -------------------------------------------------------------------------------------


def test_pipeline_run_records_config_and_provenance(champion: dict, root: Path) -> None:
    run = MlflowClient().get_run(champion["run_id"])
    assert run.data.params["train.lr"] == "0.001"
    assert run.data.params["train.betas"] == "[0.9, 0.95]"
    assert len(run.data.params["collect.topics"]) <= 6000  # 2000 topics: cut, not refused
    assert run.data.tags["data_fingerprint"] == "data-fp-1"
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert run.data.tags["mlflow.source.git.commit"] == head.stdout.strip()
    assert run.info.status == "FINISHED"  # register, the last phase, closes the run


def test_a_failed_pipeline_closes_its_run_as_failed(root: Path, champion: dict) -> None:
    cfg = RegisterConfig(experiment_name="failures")
    run_id = start_pipeline_run(cfg, root, {})
    assert MlflowClient().get_run(run_id).info.status == "RUNNING"
    finish_pipeline_run(cfg, root, run_id, failed=True)
    assert MlflowClient().get_run(run_id).info.status == "FAILED"


def test_store_defaults_to_sqlite_under_the_root_and_never_writes_to_cwd(
    root: Path, champion: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = resolve_store(None, root)
    assert store.tracking_uri == f"sqlite:///{(root / 'mlflow' / 'mlflow.db').resolve()}"
    experiment = MlflowClient(store.tracking_uri).get_experiment_by_name(champion["cfg"].experiment_name)
    assert experiment.artifact_location == (root / "mlflow" / "artifacts").resolve().as_uri()
    monkeypatch.chdir(tmp_path)
    run_id = start_pipeline_run(RegisterConfig(experiment_name="cwd-check"), root, {"a": 1})
    MlflowClient().log_text(run_id, "x", "note.txt")
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    assert list((root / "mlflow" / "artifacts").rglob("note.txt"))


def test_log_metrics_batched_sends_at_most_1000_per_call(root: Path, champion: dict) -> None:
    calls: list[int] = []

    class CountingClient(MlflowClient):
        def log_batch(self, run_id, metrics=(), **kwargs):
            calls.append(len(metrics))
            return super().log_batch(run_id, metrics=metrics, **kwargs)

    run_id = start_pipeline_run(RegisterConfig(experiment_name="batching"), root, {})
    client = CountingClient()  # after the run started: that pointed MLflow at the root's store
    rows = [{"step": s, "train_loss": 1.0 / (s + 1), "mfu%": 0.5, "note": "text"} for s in range(1500)]
    assert log_metrics_batched(run_id, rows, client) == 3000
    assert calls == [1000, 1000, 1000]
    history = client.get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1500))
    assert "mfu_" in client.get_run(run_id).data.metrics  # a key MLflow would refuse, made legal


# -- registering ------------------------------------------------------------------------------------------


def test_register_logs_metrics_curve_samples_and_reports(champion: dict) -> None:
    client = MlflowClient()
    run = client.get_run(champion["run_id"])
    assert run.data.metrics["val_bpb"] == 2.0 and run.data.metrics["val_perplexity"] == 5.5
    assert run.data.metrics["eval_tokens"] == 1000
    assert len(client.get_metric_history(run.info.run_id, "train/train_loss")) == 40  # torn last line skipped
    assert len(client.get_metric_history(run.info.run_id, "train/val_bpb")) == 4  # the trainer's estimates
    assert run.data.metrics["data.kept"] == 10  # report stats as metrics
    with open(
        mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="training/loss_curve.png"),
        "rb",
    ) as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    names = {
        a.path
        for folder in ("evaluation", "reports/data", "reports/tokenizer")
        for a in client.list_artifacts(run.info.run_id, folder)
    }
    assert {
        "evaluation/metrics.json",
        "evaluation/samples.md",
        "reports/data/report.json",
        "reports/data/stats.json",
    } <= names
    assert (
        not {"reports/tokenizer/tokenizer.model", "reports/data/documents.parquet"} & names
    )  # small text only


def test_register_logs_only_the_steps_the_live_stream_did_not_send(root: Path, tokenizer_file: Path) -> None:
    cfg = RegisterConfig(experiment_name="live", model_name="live-model")
    run_id = start_pipeline_run(cfg, root, {})
    model = train_artifact(root, tokenizer_file, seed=5, final_bpb=2.3)
    stream = MetricsStream(RunRef(tracking_uri=resolve_store(None, root).tracking_uri, run_id=run_id))
    for row in read_jsonl(model.file("metrics.jsonl"))[:30]:  # the stream stopped partway
        stream(row)
    stream.close()
    run_register(cfg, model, eval_artifact(root, "live", 2.3), {}, run_id, root)
    client = MlflowClient()
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/train_loss")) == list(range(1, 41))
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/val_bpb")) == [10, 20, 30, 40]


def test_the_version_carries_its_model_card(champion: dict, root: Path, tmp_path: Path) -> None:
    client = MlflowClient()
    mv = client.get_model_version("tinyllama", "1")
    card = mv.description
    assert card.startswith("# tinyllama: model card\n")
    facts = (
        "data fingerprint: `pp`",  # the preprocess artifact
        "| builtin | 8 | 7 |",  # documents per source: collected, kept
        "- tokens: 9,000 for training (9 documents), 1,000 held out for validation (1 documents)",
        "- model config: dim 32, n_layers 2, n_heads 2",
        "validation bits per byte (lower is better; compares across tokenizers): 2.0000",
        "The future of AI is learned.",  # the sample generation
        "## Limits",
    )
    assert [fact for fact in facts if fact not in card] == []
    assert mv.tags["card.data_fingerprint"] == "pp" and mv.tags["card.train_tokens"] == "9000"
    assert mv.tags["card.data_sources"] == "builtin=7,web=3" and mv.tags["card.val_bpb"] == "2.0"
    directory = resolve_model_dir("models:/tinyllama/1", root=root, dst=tmp_path)
    assert (directory / "README.md").read_text() == card  # beside config.json and the weights
    assert "model_card.md" in {a.path for a in client.list_artifacts(champion["run_id"])}


def test_first_version_becomes_champion_and_carries_its_metrics(champion: dict) -> None:
    stats = champion["result"].stats
    assert stats["version"] == 1 and stats["champion_moved"] and stats["previous_champion"] is None
    mv = MlflowClient().get_model_version_by_alias("tinyllama", "champion")
    assert int(mv.version) == 1
    assert float(mv.tags["val_bpb"]) == 2.0 and mv.tags["train_fingerprint"] == champion["model"].fingerprint
    assert (
        json.loads(champion["result"].file("registration.json").read_text())["model_uri"]
        == "models:/tinyllama/1"
    )


def test_champion_loads_by_alias_and_generates_text(champion: dict) -> None:
    model = mlflow.pyfunc.load_model("models:/tinyllama@champion")
    out = model.predict(["The future of AI is"], params={"seed": 0})
    assert isinstance(out, list) and len(out) == 1 and isinstance(out[0], str) and out[0]


def test_a_worse_model_is_registered_but_does_not_take_champion(
    champion: dict, root: Path, tokenizer_file: Path
) -> None:
    cfg = RegisterConfig()
    run_id = start_pipeline_run(cfg, root, {"run": 2})
    result = run_register(
        cfg,
        train_artifact(root, tokenizer_file, seed=2, final_bpb=2.5),
        eval_artifact(root, "b", 2.5),
        {},
        run_id,
        root,
    )
    assert result.stats["version"] == 2 and not result.stats["champion_moved"]
    assert result.stats["champion_version"] == 1 and result.stats["previous_champion_value"] == 2.0
    assert int(MlflowClient().get_model_version_by_alias("tinyllama", "champion").version) == 1


def test_the_same_model_again_reuses_its_version(champion: dict, root: Path) -> None:
    cfg = RegisterConfig()
    run_id = start_pipeline_run(cfg, root, {"run": "nightly, nothing changed"})
    result = run_register(cfg, champion["model"], champion["evaluation"], {}, run_id, root)
    assert result.stats["reused_version"] and result.stats["version"] == 1
    versions = MlflowClient().search_model_versions(
        f"name = 'tinyllama' and tags.train_fingerprint = '{champion['model'].fingerprint}'"
    )
    assert len(versions) == 1
    assert MlflowClient().get_run(run_id).data.tags["model_uri"] == "models:/tinyllama/1"


def test_champion_rule_strictly_lower_wins(root: Path, champion: dict) -> None:
    """The alias rule alone, on versions created directly in the registry (no model files needed)."""
    client, cfg = MlflowClient(), RegisterConfig(model_name="rule-check")
    client.create_registered_model(cfg.model_name)

    def version(bpb: float | None) -> int:
        tags = {} if bpb is None else {"val_bpb": repr(bpb)}
        return int(client.create_model_version(cfg.model_name, "file:///nowhere", tags=tags).version)

    hand_picked = version(None)  # a champion set by hand, with no metric
    client.set_registered_model_alias(cfg.model_name, "champion", str(hand_picked))
    assert promote_if_better(client, cfg, version(2.0), 2.0)["champion_moved"]  # measured beats unmeasured
    assert promote_if_better(client, cfg, version(1.5), 1.5)["champion_moved"]
    assert not promote_if_better(client, cfg, version(1.5), 1.5)["champion_moved"]  # a tie keeps it
    assert not promote_if_better(client, cfg, version(1.6), 1.6)["champion_moved"]
    assert not promote_if_better(client, cfg, version(None), None)["champion_moved"]
    assert not promote_if_better(client, cfg, version(math.nan), math.nan)["champion_moved"]
    assert int(client.get_model_version_by_alias(cfg.model_name, "champion").version) == 3


def test_a_model_with_corpus_ngrams_is_served_with_its_tokens(root: Path, tokenizer_file: Path) -> None:
    cfg = RegisterConfig(model_name="tinyllama-ngrams")

    def build(out: Path) -> dict:
        make_model_dir(out / "model", tokenizer_file, seed=3)
        model = TinyLlama.from_pretrained(out / "model")
        model.config.corpus_ngram_weights = [[0.5] * 10] * 2
        model.corpus_ngrams = CorpusNgrams(np.arange(4, 200) % TINY_VOCAB, TINY_VOCAB, 2)
        model.save_pretrained(out / "model", tokenizer_file=tokenizer_file)
        return {"steps": 1, "best_val_bpb": 3.0}

    trained = publish(root, "train", "train-ngrams", build)
    run_id = start_pipeline_run(cfg, root, {"run": "ngrams"})
    run_register(cfg, trained, eval_artifact(root, "ngrams", 3.0), {}, run_id, root)
    served = mlflow.pyfunc.load_model("models:/tinyllama-ngrams@champion")  # fails without the tokens
    assert served.predict(["The future of AI is"], params={"seed": 0})[0]
    directory = resolve_model_dir("models:/tinyllama-ngrams/1", root=root, dst=root / "ngrams-download")
    assert sha256_file(directory / CORPUS_FILE) == sha256_file(trained.dir / "model" / CORPUS_FILE)


# -- getting models back ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["models:/tinyllama@champion", "models:/tinyllama/1", "runs:/{run_id}/model"])
def test_resolve_model_dir_downloads_the_three_files(
    champion: dict, root: Path, tmp_path: Path, ref: str
) -> None:
    directory = resolve_model_dir(ref.format(run_id=champion["run_id"]), root=root, dst=tmp_path)
    source = champion["model"].dir / "model"
    assert {f: sha256_file(directory / f) for f in MODEL_FILES} == {
        f: sha256_file(source / f) for f in MODEL_FILES
    }


def test_resolve_model_dir_accepts_local_dirs_and_explains_bad_refs(champion: dict, root: Path) -> None:
    assert resolve_model_dir(champion["model"].dir) == champion["model"].dir / "model"  # a train artifact
    assert resolve_model_dir(str(champion["model"].dir / "model")) == champion["model"].dir / "model"
    with pytest.raises(FileNotFoundError, match="MLflow URI"):
        resolve_model_dir("no/such/dir")
    with pytest.raises(ValueError, match="cannot resolve models:/nope@champion"):
        resolve_model_dir("models:/nope@champion", root=root)


def test_incomplete_inputs_fail_before_anything_is_logged(
    root: Path, tmp_path: Path, tokenizer_file: Path
) -> None:
    def no_tokenizer(out: Path) -> None:
        make_model_dir(out / "model", tokenizer_file=None)

    bare = publish(root, "train", "no-tokenizer", no_tokenizer)
    cfg = RegisterConfig(experiment_name="bad-inputs")
    run_id = start_pipeline_run(cfg, root, {})
    with pytest.raises(ModelDirError, match=r"tokenizer\.model.*tokenizer_file"):
        run_register(cfg, bare, eval_artifact(root, "c", 2.0), {}, run_id, root)
    good = train_artifact(root, tokenizer_file, 3, 2.0)
    with pytest.raises(FileNotFoundError, match="reports to log"):
        run_register(cfg, good, eval_artifact(root, "c", 2.0), {"data": root / "missing.json"}, run_id, root)
    empty_eval = publish(root, "evaluate", "empty", lambda out: None)
    with pytest.raises(FileNotFoundError, match="evaluate phase"):
        run_register(cfg, good, empty_eval, {}, run_id, root)
    assert not MlflowClient().list_artifacts(run_id)


# -- the Prefect task and the REST server ------------------------------------------------------------------


@pytest.mark.slow
def test_register_task_runs_in_a_flow(prefect_harness: None, root: Path, tokenizer_file: Path) -> None:
    from prefect import flow

    from tasks.register import register

    cfg = RegisterConfig(experiment_name="prefect", model_name="prefect-model")
    model, evaluation = train_artifact(root, tokenizer_file, 4, 2.2), eval_artifact(root, "d", 2.2)

    @flow
    def pipeline() -> Artifact:
        run_id = start_pipeline_run(cfg, root, {"flow": True})
        return register(cfg, model, evaluation, {}, run_id, root)

    result = pipeline()
    assert result.phase == "register" and result.stats["champion_moved"]
    assert "prefect.flow_run_id" in MlflowClient().get_run(result.stats["run_id"]).data.tags
    assert int(MlflowClient().get_model_version_by_alias("prefect-model", "champion").version) == 1


@pytest.mark.slow
def test_mlflow_models_serve_answers_a_rest_request(champion: dict, root: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": resolve_store(None, root).tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # uvicorn
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/tinyllama@champion"]
    cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:

        def alive() -> None:
            assert server.poll() is None, server.stdout.read().decode()[-3000:]

        wait_until(lambda: answers(f"http://127.0.0.1:{port}/ping"), "mlflow models serve up", alive=alive)
        body = {"inputs": ["The future of AI is"], "params": {"max_new_tokens": 8, "seed": 0}}
        response = httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=300)
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert len(predictions) == 1 and isinstance(predictions[0], str) and predictions[0]
    finally:
        stop_group(server)  # the server and its uvicorn child, nothing else
