"""What the pipeline's MLflow run shows besides the model: curves, evaluation figures, samples, reports.

Read from the upstream artifacts as they are published: the train phase's `metrics.jsonl` (per-step
metrics, drawn as the loss curve), the evaluate phase's `metrics.json` and `samples.json`, and the
small JSON/Markdown files of the data and tokenizer reports. Large files (Parquet tables, weights)
are never logged as reports.

This module logs into an open run; opening and closing it is `tasks.tracking.mlflow_run`'s job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient
from mlflow.entities import Metric

from tasks import markdown as md
from tasks.storage.artifacts import Artifact
from tasks.tracking.mlflow_run import (
    MAX_METRICS_PER_BATCH,
    TRAIN_METRICS_PREFIX,
    chunks,
    flat_numbers,
    is_number,
    log_metrics_batched,
    logged_steps,
    metric_key,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Evaluation may name its figures plainly ("bpb"); in the run and on versions they are "val_bpb" etc.
_VAL_NAMES = {"loss": "val_loss", "perplexity": "val_perplexity", "ppl": "val_perplexity", "bpb": "val_bpb"}

# Reports are small: JSON/Markdown/text files only (never Parquet tables or weights).
_REPORT_SUFFIXES = {".json", ".md", ".txt", ".csv"}
_REPORT_MAX_BYTES = 5 << 20


def log_run_contents(
    client: MlflowClient,
    run_id: str,
    model: Artifact,
    evaluation: Artifact,
    metrics: Mapping[str, float],
    reports: Mapping[str, Artifact | str | Path],
    step_metrics: bool = True,
) -> None:
    """Everything but the model: step metrics, loss curve, evaluation metrics and samples, reports.

    The per-step rows the train phase already sent live are not logged again: only what the run lacks
    (all of them when training was a cache hit or its live stream stopped). With `step_metrics` off the
    per-step rows are not logged as metrics; their file and curve still are.
    """
    steps_file = model.file("metrics.jsonl")
    steps = read_jsonl(steps_file) if steps_file.is_file() else []
    if step_metrics and steps:
        logged = logged_steps(client, run_id, TRAIN_METRICS_PREFIX)
        log_metrics_batched(run_id, steps, client, prefix=TRAIN_METRICS_PREFIX, logged=logged)
    if steps:
        client.log_artifact(run_id, str(steps_file), "training")
        if (figure := loss_curve_figure(steps)) is not None:
            client.log_figure(run_id, figure, "training/loss_curve.png")

    final_step = max((int(r["step"]) for r in steps if is_number(r.get("step"))), default=0)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, final_step) for k, v in metrics.items()])
    _log_files(
        client, run_id, [evaluation.file("metrics.json"), evaluation.file("samples.json")], "evaluation"
    )
    if samples := read_samples(evaluation):
        client.log_text(run_id, samples_markdown(samples), "evaluation/samples.md")

    for name, report in reports.items():
        _log_report(client, run_id, name, report)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a torn last line (a killed writer) is skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def evaluation_metrics(evaluation: Artifact) -> dict[str, float]:
    """The numeric figures of the evaluation's metrics.json, named val_* (quality) or eval_* (counts)."""
    path = evaluation.file("metrics.json")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; run the evaluate phase before register")
    raw = flat_numbers(json.loads(path.read_text()))
    out = {}
    for key, value in raw.items():
        name = key if key.startswith(("val_", "eval_")) else _VAL_NAMES.get(key, f"eval_{key}")
        out[metric_key(name)] = float(value)
    return out


def read_samples(evaluation: Artifact) -> list[tuple[str, str]] | None:
    """samples.json as (prompt, generation) pairs; accepts {prompt: text} or [{prompt, generation}]."""
    path = evaluation.file("samples.json")
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if isinstance(data, Mapping):
        return [(str(k), str(v)) for k, v in data.items()]
    pairs = []
    for item in data if isinstance(data, list) else []:
        if isinstance(item, Mapping):
            text = item.get("generation", item.get("text", item.get("output", "")))
            pairs.append((str(item.get("prompt", "")), str(text)))
    return pairs


def samples_markdown(samples: Sequence[tuple[str, str]]) -> str:
    lines = ["# Sample generations", ""]
    for prompt, text in samples:
        lines += [f"**{md.cell(prompt)}**", "", md.fenced(prompt + text), ""]
    return "\n".join(lines)


def loss_curve_figure(rows: Sequence[Mapping[str, Any]]) -> Figure | None:
    """Train/validation loss against step (val bits per byte on a second axis), and the learning rate.

    Built on `matplotlib.figure.Figure` directly (the Agg canvas), so no pyplot global state or GUI.
    """
    from matplotlib.figure import Figure

    train, val, bpb = _series(rows, "train_loss", "loss"), _series(rows, "val_loss"), _series(rows, "val_bpb")
    lr = _series(rows, "lr")
    if not (train[0] or val[0] or bpb[0]):
        return None
    fig = Figure(figsize=(8, 6.5 if lr[0] else 4.5), layout="constrained")
    if lr[0]:
        ax, ax_lr = fig.subplots(2, 1, sharex=True, height_ratios=[2.5, 1])
    else:
        ax, ax_lr = fig.subplots(1, 1), None
    if train[0]:
        ax.plot(*train, label="train loss", linewidth=1, alpha=0.8)
    if val[0]:
        ax.plot(*val, "o-", label="val loss", markersize=3)
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Training curve")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    if bpb[0]:
        ax_bpb = ax.twinx()
        ax_bpb.plot(*bpb, "s--", color="tab:red", label="val bits/byte", markersize=3)
        ax_bpb.set_ylabel("bits per byte")
        ax_bpb.legend(loc="upper center")
    if ax_lr is not None:
        ax_lr.plot(*lr, color="tab:green")
        ax_lr.set_ylabel("learning rate")
        ax_lr.grid(alpha=0.3)
    (ax_lr or ax).set_xlabel("step")
    return fig


def _series(rows: Sequence[Mapping[str, Any]], *keys: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the first of `keys` each row has as a number; rows without a step are left out."""
    xs, ys = [], []
    for r in rows:
        value = next((r[k] for k in keys if is_number(r.get(k))), None)
        if value is not None and is_number(r.get("step")):
            xs.append(float(r["step"]))
            ys.append(float(value))
    return xs, ys


def _log_report(client: MlflowClient, run_id: str, name: str, report: Artifact | str | Path) -> None:
    """Log a report's small files under reports/<name>/ and its numeric stats as `<name>.<key>` metrics."""
    prefix = f"reports/{metric_key(name)}"
    if isinstance(report, Artifact):
        client.log_dict(run_id, report.stats, f"{prefix}/stats.json")
        numbers = flat_numbers(report.stats)
        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(f"{name}.{k}"), float(v), now, 0) for k, v in numbers.items()]
        for chunk in chunks(metrics, MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=chunk)
        path = report.dir
    else:
        path = Path(report)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name != "manifest.json")
    else:
        raise FileNotFoundError(f"report {name!r}: {path} does not exist")
    _log_files(client, run_id, files, prefix)


def _log_files(client: MlflowClient, run_id: str, files: Iterable[Path], artifact_path: str) -> None:
    for f in files:
        if f.is_file() and f.suffix in _REPORT_SUFFIXES and f.stat().st_size <= _REPORT_MAX_BYTES:
            client.log_artifact(run_id, str(f), artifact_path)
