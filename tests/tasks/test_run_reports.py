"""What the run shows besides the model, without a store: the loss curve, samples, evaluation figures."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.storage.artifacts import publish
from tasks.tracking.run_reports import (
    evaluation_metrics,
    loss_curve_figure,
    read_jsonl,
    read_samples,
    samples_markdown,
)


def test_loss_curve_handles_missing_series() -> None:
    assert loss_curve_figure([{"step": 1, "tokens_per_s": 5.0}]) is None
    fig = loss_curve_figure([{"step": 1, "val_loss": 3.0}, {"step": 2, "val_loss": 2.5}])  # no train, no lr
    assert fig is not None and len(fig.axes) == 1


def test_evaluation_figures_are_named_val_or_eval_and_samples_read_in_both_shapes(tmp_path: Path) -> None:
    def build(out: Path) -> dict:
        (out / "metrics.json").write_text(json.dumps({"bpb": 2.0, "ppl": 5.5, "tokens": 10, "val_x": 1}))
        (out / "samples.json").write_text(json.dumps([{"prompt": "A", "generation": " b"}]))
        return {}

    evaluation = publish(tmp_path, "evaluate", "fp", build)
    assert evaluation_metrics(evaluation) == {
        "val_bpb": 2.0,
        "val_perplexity": 5.5,
        "eval_tokens": 10.0,
        "val_x": 1.0,
    }
    assert read_samples(evaluation) == [("A", " b")]
    assert "```text\nA b\n```" in samples_markdown([("A", " b")])


def test_read_jsonl_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "tra')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
