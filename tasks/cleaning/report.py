"""The preprocess report: counts in and out per rule and source, and the length distribution.

Built from plain lists so it is testable without Parquet; `report_markdown` renders the same dict for
the Prefect UI and MLflow (the JSON is the source of truth, the markdown a view of it).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from tasks import markdown as md

QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)
CHAR_BUCKETS = (0, 1_000, 5_000, 20_000, 50_000)


def distribution(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    out = {f"p{int(q * 100)}": float(np.quantile(arr, q)) for q in QUANTILES}
    out["mean"] = float(arr.mean())
    return out


def histogram(values: list[int], edges: tuple[int, ...] = CHAR_BUCKETS) -> list[dict[str, Any]]:
    rows = []
    for i, low in enumerate(edges):
        high = edges[i + 1] if i + 1 < len(edges) else None
        label = f"{low:,}-{high:,}" if high is not None else f"{low:,}+"
        n = sum(1 for v in values if v >= low and (high is None or v < high))
        rows.append({"characters": label, "documents": n})
    return rows


def build_report(
    *,
    sources_in: list[str],
    chars_in: int,
    chars_normalized: int,
    stages: list[dict[str, Any]],
    rejected_rules: list[str],
    rejected_sources: list[str],
    kept_sources: list[str],
    row_chars: list[int],
    row_words: list[int],
    split_documents: int,
) -> dict[str, Any]:
    by_rule = Counter(rejected_rules)
    src_in, src_rej, src_kept = Counter(sources_in), Counter(rejected_sources), Counter(kept_sources)
    return {
        "documents_in": len(sources_in),
        "documents_kept": len(sources_in) - len(rejected_rules),
        "rows_out": len(row_chars),
        "split_documents": split_documents,
        "rejected": len(rejected_rules),
        "rejected_by_rule": dict(by_rule.most_common()),
        "stages": stages,
        "by_source": {
            s: {"in": src_in[s], "rejected": src_rej[s], "rows_out": src_kept[s]} for s in sorted(src_in)
        },
        "characters": {
            "in": chars_in,
            "after_normalization": chars_normalized,
            "out": int(sum(row_chars)),
        },
        "length_chars": distribution(row_chars),
        "length_words": distribution(row_words),
        "histogram": histogram(row_chars),
    }


def stage_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per step in order: documents in, dropped, out (the Prefect table artifact)."""
    return [dict(row) for row in report["stages"]]


def report_markdown(report: dict[str, Any]) -> str:
    c = report["characters"]
    lines = [
        "# Preprocess",
        "",
        f"{report['documents_in']} documents in, {report['documents_kept']} kept "
        f"({report['rows_out']} rows after splitting {report['split_documents']} long ones), "
        f"{report['rejected']} rejected.",
        f"Characters: {c['in']:,} in, {c['after_normalization']:,} after normalisation, {c['out']:,} out.",
        "",
        "## Steps",
        "",
        "| step | in | dropped | out |",
        "|---|---:|---:|---:|",
        *[f"| {s['stage']} | {s['in']} | {s['dropped']} | {s['out']} |" for s in report["stages"]],
        "",
        "## By source",
        "",
        "| source | in | rejected | rows out |",
        "|---|---:|---:|---:|",
        *[
            f"| {md.cell(s)} | {v['in']} | {v['rejected']} | {v['rows_out']} |"
            for s, v in report["by_source"].items()
        ],
        "",
        "## Length (characters per row)",
        "",
        "| " + " | ".join(report["length_chars"]) + " |",
        "|" + "---:|" * len(report["length_chars"]),
        "| " + " | ".join(f"{v:,.0f}" for v in report["length_chars"].values()) + " |",
        "",
        "| characters | rows |",
        "|---|---:|",
        *[f"| {h['characters']} | {h['documents']} |" for h in report["histogram"]],
    ]
    return "\n".join(lines) + "\n"
