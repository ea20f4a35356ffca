"""Credentials never reach what people read: MLflow params, registration.json, Prefect markdown, collect
summaries and log lines (the helper, then the real paths: a collect run against a loopback site and a
register run against an `mlflow server` on a SQLite store, reached with a password in its URI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from markdown_it import MarkdownIt
from mlflow import MlflowClient

from tasks.collect import CollectConfig, run_collect, summary_markdown
from tasks.redact import is_secret_name, redact_url, redact_value
from tasks.sources.errors import TransientSourceError
from tasks.storage.artifacts import Artifact, publish
from tests.factories import make_model_dir, train_tiny_tokenizer
from tests.processes import answers, free_port, stop_group, wait_until
from tests.tasks.fakes.server import loopback
from tests.tasks.fakes.web import serve_site

SECRETS = ("s3cr3t-pass", "tok-123", "key-456", "sig-789")


def assert_no_secret(text: str, where: str) -> None:
    leaked = [s for s in SECRETS if s in text]
    assert not leaked, f"{where} shows {leaked}:\n{text[:3000]}"


# -- the helper ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://alice:s3cr3t-pass@mlflow.example.org", "https://***@mlflow.example.org"),
        ("http://tok-123@host:5000/api?x=1", "http://***@host:5000/api?x=1"),
        (
            "https://example.org/page?access_token=tok-123&lang=en&X-Amz-Signature=sig-789#top",
            "https://example.org/page?access_token=***&lang=en&X-Amz-Signature=***#top",
        ),
        (
            "see [run](https://u:s3cr3t-pass@h/#/runs/1?api_key=key-456) now",
            "see [run](https://***@h/#/runs/1?api_key=***) now",
        ),
        (
            '["https://e.org/a?key=key-456", "https://e.org/b?page=2"]',
            '["https://e.org/a?key=***", "https://e.org/b?page=2"]',
        ),
        ("sqlite:////data/mlflow/mlflow.db", "sqlite:////data/mlflow/mlflow.db"),
        (
            "https://example.org/search?keyword=monkey&author=me",
            "https://example.org/search?keyword=monkey&author=me",
        ),
        (
            "mail me at someone@example.org (https://example.org/a@b)",
            "mail me at someone@example.org (https://example.org/a@b)",
        ),
    ],
)
def test_redact_url_masks_userinfo_and_secret_query_values_only(text: str, expected: str) -> None:
    assert redact_url(text) == expected


def test_secret_names_and_nested_values() -> None:
    assert all(map(is_secret_name, ["token", "access_token", "apikey", "api-key", "sig", "client_secret"]))
    assert not any(map(is_secret_name, ["page", "lang", "keyword", "author", "tokenizer_vocab"]))
    nested = {"a": ["https://u:s3cr3t-pass@h/x", 3, ("?token=tok-123",)], "b": None}
    assert redact_value(nested) == {"a": ["https://***@h/x", 3, ("?token=***",)], "b": None}


# -- collect: summary.json, the stats (manifest, Prefect markdown), the failure message, log lines ---------


def test_collect_keeps_web_credentials_out_of_summaries_failures_and_logs(tmp_path: Path) -> None:
    with loopback() as server, serve_site(server) as site:
        host = site.url.removeprefix("http://")
        failing = [
            f"http://bob:s3cr3t-pass@{host}/private/secret.html?api_key=key-456",  # robots.txt says no
            f"{site.url}/missing.html?access_token=tok-123&X-Amz-Signature=sig-789",  # 404
        ]
        web = {
            "urls": [f"{site.url}/article.html?token=tok-123", *failing],
            "per_host_delay_s": 0.0,
            "allow_hosts": [host],
        }
        cfg = CollectConfig(user_agent="tests/0.1 (t@example.org)", wikipedia={"enabled": False}, web=web)
        lines: list[str] = []
        artifact = run_collect(cfg, tmp_path / "root", log=lines.append)

        only_failing = cfg.model_copy(update={"web": cfg.web.model_copy(update={"urls": failing})})
        with pytest.raises(TransientSourceError) as nothing:
            run_collect(only_failing, tmp_path / "other", log=lines.append)

    assert artifact.stats["failed"] == 2 and artifact.stats["documents"] == 1
    assert_no_secret(artifact.file("summary.json").read_text(), "summary.json")
    assert_no_secret((artifact.dir / "manifest.json").read_text(), "manifest.json")
    markdown = summary_markdown(artifact.stats)
    assert_no_secret(markdown, "the Prefect markdown")
    shown = MarkdownIt("commonmark").enable("table").render(markdown)
    assert "/missing.html?access_token=***" in shown  # the failure is still there to read
    assert_no_secret("\n".join(lines), "the log")
    assert any("***@" in line for line in lines)
    assert_no_secret(str(nothing.value), "the error of a collection that found nothing")


def test_a_web_document_keeps_no_credentials_of_its_url() -> None:
    """The documents file is read by people and tools: its url column carries no userinfo or token."""
    from tasks.sources.web import WebConfig, WebFetcher

    with loopback() as server, serve_site(server) as site:
        host = site.url.removeprefix("http://")
        cfg = WebConfig(per_host_delay_s=0.0, allow_hosts=[host])
        for path in ("article.html", "plain.txt"):
            doc = WebFetcher(cfg, "tests/0.1 (t@example.org)").fetch(
                f"http://bob:s3cr3t-pass@{host}/{path}?access_token=tok-123"
            )
            assert doc.url == f"http://***@{host}/{path}?access_token=***"
            assert_no_secret(json.dumps(doc.to_record()), "the document record")


# -- register: MLflow params, registration.json and the Prefect markdown ----------------------------------


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """`mlflow server` on loopback over SQLite; it accepts (and ignores) basic-auth credentials."""
    tmp = tmp_path_factory.mktemp("server")
    port = free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}"]
    cmd += ["--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", "1"]
    server = subprocess.Popen(
        cmd, env=env, cwd=tmp, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:

        def alive() -> None:
            assert server.poll() is None, server.stdout.read().decode()[-3000:]

        wait_until(lambda: answers(f"http://127.0.0.1:{port}/health"), "mlflow server up", alive=alive)
        yield port
    finally:
        stop_group(server)


def _train_and_eval(root: Path, tokenizer_file: Path) -> tuple[Artifact, Artifact]:
    def train(out: Path) -> dict:
        make_model_dir(out / "model", tokenizer_file)
        (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "train_loss": 5.0, "val_bpb": 2.0}) + "\n")
        return {"steps": 1}

    def evaluate(out: Path) -> dict:
        metrics = {"loss": 1.7, "perplexity": 5.5, "bpb": 2.0, "tokens": 100, "bytes": 400}
        (out / "metrics.json").write_text(json.dumps(metrics))
        (out / "samples.json").write_text(json.dumps({"The future of AI is": " small."}))
        return metrics

    return publish(root, "train", "redact-train", train), publish(root, "evaluate", "redact-eval", evaluate)


@pytest.mark.slow
def test_register_keeps_the_tracking_password_out_of_params_registration_and_markdown(
    mlflow_server: int, tmp_path: Path
) -> None:
    from flows.config import PipelineConfig
    from tasks.register import REGISTRATION_FILE, registration_markdown, run_register
    from tasks.tracking.mlflow_run import start_pipeline_run

    uri = f"http://alice:s3cr3t-pass@127.0.0.1:{mlflow_server}"
    config = PipelineConfig.model_validate(
        {
            "register": {"tracking_uri": uri, "experiment_name": "redact", "bundle_code": False},
            "collect": {"web": {"urls": ["https://example.org/feed?access_token=tok-123"]}},
        }
    )
    root = tmp_path / "root"
    model, evaluation = _train_and_eval(root, train_tiny_tokenizer(tmp_path))
    run_id = start_pipeline_run(config.register, root, config)
    result = run_register(config.register, model, evaluation, {}, run_id, root)

    params = MlflowClient(tracking_uri=uri).get_run(run_id).data.params
    assert params["register.tracking_uri"] == f"http://***@127.0.0.1:{mlflow_server}"
    assert_no_secret(json.dumps(params), "the MLflow params")
    assert_no_secret(result.file(REGISTRATION_FILE).read_text(), REGISTRATION_FILE)
    markdown = registration_markdown(config.register, result.stats)
    assert_no_secret(markdown, "the Prefect markdown")
    assert f"(http://***@127.0.0.1:{mlflow_server}/#/experiments/" in markdown  # the link still works


@pytest.mark.slow
def test_live_metrics_that_give_up_log_no_password(mlflow_server: int) -> None:
    from tasks.monitoring.live_metrics import MetricsStream
    from tasks.tracking.mlflow_run import RunRef

    warnings: list[str] = []
    run = RunRef(tracking_uri=f"http://alice:s3cr3t-pass@127.0.0.1:{mlflow_server}", run_id="no-such-run")
    stream = MetricsStream(run, warn=warnings.append)  # the server answers: no such run
    assert not stream.live and len(warnings) == 1
    assert_no_secret(warnings[0], "the warning")
    assert f"http://***@127.0.0.1:{mlflow_server}" in warnings[0]
