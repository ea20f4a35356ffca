"""The preprocess report: counts in and out per rule and source, and the length distribution.

Built from counts (documents per source and rule, rows per length) that each shard's job returns and
the phase adds up, so it is testable without Parquet and never needs the documents; `report_markdown`
renders the same dict for the Prefect UI and MLflow (the JSON is the source of truth, the markdown a
view of it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from tasks import markdown as md

QUANTILES = (0.0, 0.1, 0.5, 0.9, 1.0)
CHAR_BUCKETS = (0, 1_000, 5_000, 20_000, 50_000)


def distribution(counts: Mapping[int, int]) -> dict[str, float]:
    """Quantiles and mean of values given as value -> how many times, equal to `np.quantile` of the list."""
    counts = {v: c for v, c in counts.items() if c}
    if not counts:
        return {}
    values = np.array(sorted(counts), dtype=np.float64)
    cum = np.cumsum([counts[int(v)] for v in values])
    n = int(cum[-1])

    def at(k: int) -> float:  # the k-th smallest value, counting from 0
        return float(values[np.searchsorted(cum, k, side="right")])

    out = {}
    for q in QUANTILES:
        h = q * (n - 1)
        low = int(np.floor(h))
        a, b, t = at(low), at(min(low + 1, n - 1)), h - low
        out[f"p{int(q * 100)}"] = b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t  # numpy's lerp
    out["mean"] = float(np.dot(values, np.diff(np.r_[0, cum])) / n)
    return out


def histogram(counts: Mapping[int, int], edges: tuple[int, ...] = CHAR_BUCKETS) -> list[dict[str, Any]]:
    rows = []
    for i, low in enumerate(edges):
        high = edges[i + 1] if i + 1 < len(edges) else None
        label = f"{low:,}-{high:,}" if high is not None else f"{low:,}+"
        n = sum(c for v, c in counts.items() if v >= low and (high is None or v < high))
        rows.append({"characters": label, "documents": n})
    return rows


def build_report(
    *,
    sources_in: Mapping[str, int],
    chars_in: int,
    chars_normalized: int,
    stages: list[dict[str, Any]],
    rejected_by_rule: Mapping[str, int],
    rejected_sources: Mapping[str, int],
    kept_sources: Mapping[str, int],
    row_chars: Mapping[int, int],
    row_words: Mapping[int, int],
    split_documents: int,
) -> dict[str, Any]:
    """The report from counts (per source, per rule, rows per length), so no document list is kept."""
    documents_in, rejected = sum(sources_in.values()), sum(rejected_by_rule.values())
    return {
        "documents_in": documents_in,
        "documents_kept": documents_in - rejected,
        "rows_out": sum(row_chars.values()),
        "split_documents": split_documents,
        "rejected": rejected,
        "rejected_by_rule": dict(Counter(rejected_by_rule).most_common()),
        "stages": stages,
        "by_source": {
            s: {
                "in": sources_in[s],
                "rejected": rejected_sources.get(s, 0),
                "rows_out": kept_sources.get(s, 0),
            }
            for s in sorted(sources_in)
        },
        "characters": {
            "in": chars_in,
            "after_normalization": chars_normalized,
            "out": int(sum(v * c for v, c in row_chars.items())),
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
