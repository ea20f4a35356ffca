"""The data phases at scale: collect -> preprocess -> tokenizer -> encode on a synthetic dump of a given size.

    .venv/bin/python benchmarks/bench_data_scale.py --sizes 0.1 0.4 1.6
    .venv/bin/python benchmarks/bench_data_scale.py --sizes 0.4 --source corpus.jsonl --dask-workers 0 2

Not a test: it prints a table per size. The corpus is a dump in the layout of a Wikipedia Parquet export
(files of `id`, `url`, `title`, `text`): sentences of a real corpus (`--source`, jsonl with `content` or
`text`; else Python's own documentation) recombined into unique documents of ~7 KB, and ~3% of them
planted near-duplicates of an earlier one (a few words changed), which preprocess should drop. The collect
phase reads the dump through the local source.

Each phase runs in its own process (this script with `--phase`), so its peak RSS is its own: "driver"
is that process, "workers" the largest Dask worker under `--dask-workers N` (a LocalCluster of N
one-thread workers, the shards sent with `Client.map`, the placement the data flow's task runner gives
them, without the Prefect server). MB/s is text megabytes (UTF-8 of the dump's `text`) over the phase's
own wall time, imports excluded; "end to end" divides by the sum of the four.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

PHASES = ("collect", "preprocess", "tokenizer", "encode")
ONE_JOB_PHASES = ("tokenizer",)  # it trains one model: one job, whatever the workers
DUMP_SCHEMA = pa.schema(
    [("id", pa.string()), ("url", pa.string()), ("title", pa.string()), ("text", pa.string())]
)
SENTENCE = re.compile(r"(?<=[.!?])\s+")


# -- the synthetic dump -------------------------------------------------------------------------------


def source_texts(source: Path | None) -> list[str]:
    """The documents of the given jsonl corpus (`content` or `text`), or of Python's documentation."""
    if source is None:
        from pydoc_data.topics import topics

        return list(topics.values())
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r.get("content") or r.get("text") or "" for r in rows]


def source_sentences(source: Path | None) -> list[str]:
    """Sentences of `source_texts(source)`, of a length that reads as prose."""
    texts = source_texts(source)
    sentences = {s.strip() for t in texts for p in t.split("\n") for s in SENTENCE.split(p)}
    kept = sorted(s for s in sentences if 40 <= len(s) <= 600 and len(s.split()) >= 6)
    if len(kept) < 100:
        raise SystemExit(
            f"{source or 'the built-in corpus'} gives only {len(kept)} usable sentences; need 100"
        )
    return kept


def make_document(rng: random.Random, sentences: list[str], target_chars: int) -> str:
    paragraphs, size = [], 0
    while size < target_chars:
        para = " ".join(rng.choice(sentences) for _ in range(rng.randint(3, 7)))
        paragraphs.append(para)
        size += len(para) + 2
    return "\n\n".join(paragraphs)


def recombined(source: Path | None, mb: float, doc_chars: int, seed: int) -> list[str]:
    """`mb` megabytes of documents of ~`doc_chars` characters made of `source`'s sentences (a fixed draw)."""
    rng, sentences = random.Random(seed), source_sentences(source)
    docs, size = [], 0
    while size < mb * 1e6:
        docs.append(make_document(rng, sentences, doc_chars))
        size += len(docs[-1].encode())
    return docs


def near_duplicate(rng: random.Random, text: str) -> str:
    """The text with ~2% of its words replaced: what a mirror or a lightly edited copy looks like."""
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, len(words) // 50)):
        words[i] = rng.choice(("the", "a", "this", "its", "one"))
    return " ".join(words)


def write_dump(
    folder: Path, gigabytes: float, sentences: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Parquet files of about `file_mb` MB of text each, until `gigabytes` of text; returns counts."""
    rng = random.Random(args.seed)
    folder.mkdir(parents=True, exist_ok=True)
    target, written, docs, dups, part = gigabytes * 1e9, 0, 0, 0, 0
    recent: list[str] = []
    while written < target:
        rows: list[dict[str, str]] = []
        file_bytes = 0
        while file_bytes < args.file_mb * 1e6 and written + file_bytes < target:
            if recent and rng.random() < args.dup_share:
                text, dups = near_duplicate(rng, rng.choice(recent)), dups + 1
            else:
                text = make_document(rng, sentences, args.doc_chars)
                recent = [*recent[-199:], text]
            n = docs + len(rows)
            rows.append(
                {"id": str(n), "url": f"https://example.org/wiki/Synthetic_{n}", "title": f"Synthetic {n}"}
            )
            rows[-1]["text"] = text
            file_bytes += len(text.encode())
        pq.write_table(pa.Table.from_pylist(rows, schema=DUMP_SCHEMA), folder / f"part-{part:05d}.parquet")
        written, docs, part = written + file_bytes, docs + len(rows), part + 1
    return {"bytes": written, "documents": docs, "near_duplicates": dups, "files": part}


# -- one phase in its own process -----------------------------------------------------------------------


def dask_mapper(workers: int):
    """A mapper over a fresh LocalCluster: the jobs go to its workers as the data flow's runner sends them."""
    import distributed

    from flows.build import cluster_kwargs, worker_settings
    from flows.config import DaskConfig

    dask_cfg = DaskConfig(enabled=True, n_workers=workers)
    with worker_settings(dask_cfg):
        cluster = distributed.LocalCluster(
            **cluster_kwargs(dask_cfg),
            processes=True,
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.WARNING,
        )
    client = distributed.Client(cluster)
    logging.getLogger("distributed").setLevel(logging.WARNING)  # the cluster's start and stop, not the table

    def run(fn, jobs):
        return client.gather(client.map(fn, list(jobs), pure=False)) if jobs else []

    return run, lambda: (client.close(), cluster.close())


def run_phase(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one phase from `spec` (config, artifacts so far); returns its artifact, times and peak RSS.

    "shard_seconds" is the wall time spent inside the mapper: the per-shard stages that Dask spreads
    over its workers, as against the driver's own work (planning, the keep-first pass, publishing).
    """
    from flows.config import PipelineConfig
    from tasks.collect import run_collect
    from tasks.preprocess import run_preprocess
    from tasks.shard_map import serial_map
    from tasks.storage.artifacts import Artifact
    from tasks.tokenizer import run_encode, run_tokenizer

    cfg = PipelineConfig.model_validate(spec["config"])
    arts = {k: Artifact.model_validate(v) for k, v in spec["artifacts"].items()}
    inner, close = (
        (serial_map, lambda: None) if not spec["dask_workers"] else dask_mapper(spec["dask_workers"])
    )
    in_mapper = [0.0]

    def mapper(fn, jobs):
        t = time.perf_counter()
        try:
            return inner(fn, jobs)
        finally:
            in_mapper[0] += time.perf_counter() - t

    root, phase = cfg.data_root, spec["phase"]
    t0 = time.perf_counter()
    try:
        if phase == "collect":
            out = run_collect(cfg.collect, root, mapper=mapper)
        elif phase == "preprocess":
            out = run_preprocess(cfg.preprocess, arts["collect"], root, mapper=mapper)
        elif phase == "tokenizer":
            out = run_tokenizer(cfg.tokenizer, arts["preprocess"], root, mapper=mapper)
        else:
            out = run_encode(cfg.tokenizer, arts["preprocess"], arts["tokenizer"], root, mapper=mapper)
        seconds = time.perf_counter() - t0
    finally:
        close()
    kib = 1024  # ru_maxrss is in KiB on Linux
    return {
        "artifact": json.loads(out.model_dump_json()),
        "seconds": seconds,
        "shard_seconds": in_mapper[0],
        "driver_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib / 1e6,
        "workers_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * kib / 1e6,
    }


def docs_in_out(phase: str, dump: dict[str, Any], arts: dict[str, Any]) -> tuple[int, int]:
    s = {k: v["stats"] for k, v in arts.items()}
    raw = s["collect"].get("documents", 0)
    if phase == "collect":
        return dump["documents"], raw
    clean = s["preprocess"].get("rows", s["preprocess"].get("documents_kept", 0))
    if phase == "preprocess":
        return raw, clean
    if phase == "tokenizer":
        return clean, s["tokenizer"].get("sampled_documents", 0)
    return clean, s["encode"].get("train_docs", 0) + s["encode"].get("val_docs", 0)


def bench_size(gigabytes: float, sentences: list[str], args: argparse.Namespace) -> None:
    """One dump of `gigabytes`, built once by every worker count asked for; then the per-shard ratios."""
    where = args.work / f"{gigabytes:g}GB"
    dump = write_dump(where / "dump", gigabytes, sentences, args)
    runs = {workers: bench_run(where, dump, workers, args) for workers in args.dask_workers}
    if len(runs) > 1:
        compare_runs(runs)


def bench_run(where: Path, dump: dict[str, Any], workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every phase on the dump with `workers` Dask workers (0: one process); prints the phase table."""
    from flows.config import load_config

    overrides = [
        f"data_root={where / f'data-{workers}w'}",
        "collect.builtin=false",
        "collect.wikipedia.enabled=false",
        f"collect.local.paths=[{where / 'dump'}]",
        "collect.local.id_field=id",  # the split then does not depend on the work folder's path
        f"tokenizer.vocab_size={args.vocab_size}",
        *args.set,
    ]
    cfg = load_config(None, overrides)
    arts: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] = {}
    rows, total_s = [], 0.0
    mb = dump["bytes"] / 1e6
    for phase in PHASES:
        spec = {"phase": phase, "config": json.loads(cfg.model_dump_json()), "artifacts": arts}
        spec["dask_workers"] = workers
        result = results[phase] = child(spec, where / f"{phase}-{workers}w.json")
        arts[phase] = result["artifact"]
        total_s += result["seconds"]
        n_in, n_out = docs_in_out(phase, dump, arts)
        rows.append(
            (
                phase,
                f"{result['seconds']:.1f}",
                f"{result['shard_seconds']:.1f}",
                f"{mb / result['seconds']:.2f}",
                f"{result['driver_rss_mb']:.0f}",
                f"{result['workers_rss_mb']:.0f}" if workers else "-",
                f"{n_in:,}",
                f"{n_out:,}",
            )
        )
    print(
        f"\n## {where.name}: {mb:.0f} MB of text, {dump['documents']:,} documents "
        f"({dump['near_duplicates']:,} planted near-duplicates) in {dump['files']} files; "
        f"{workers or 'no'} Dask workers"
    )
    header = ("phase", "seconds", "in shard jobs", "MB/s", "driver peak RSS MB", "worker peak RSS MB")
    table((*header, "docs in", "docs out"), rows)
    print(f"end to end: {mb / total_s:.2f} MB/s ({total_s:.1f} s)")
    return results


def compare_runs(runs: dict[int, dict[str, dict[str, Any]]]) -> None:
    """Each worker count against one process (the first count asked for): time in the shard jobs, and
    whether every phase's artifact has the same fingerprint (where the shards ran must not matter)."""
    base_workers, base = next(iter(runs.items()))
    rows = []
    for workers, results in list(runs.items())[1:]:
        for phase in PHASES:
            a, b = base[phase], results[phase]
            same = a["artifact"]["fingerprint"] == b["artifact"]["fingerprint"]
            rows.append(
                (
                    phase,
                    f"{workers}",
                    f"{a['shard_seconds']:.1f} / {b['shard_seconds']:.1f}",
                    f"{a['shard_seconds'] / max(b['shard_seconds'], 1e-9):.2f}x",
                    f"{a['seconds'] / b['seconds']:.2f}x",
                    "yes" if same else "NO",
                )
            )
        per_shard = [p for p in PHASES if p not in ONE_JOB_PHASES]
        for label, phases in (
            (f"per-shard phases ({', '.join(per_shard)})", per_shard),
            ("all shard jobs", PHASES),
        ):
            shard_a = sum(base[p]["shard_seconds"] for p in phases)
            shard_b = sum(results[p]["shard_seconds"] for p in phases)
            rows.append(
                (label, f"{workers}", f"{shard_a:.1f} / {shard_b:.1f}", f"{shard_a / shard_b:.2f}x", "", "")
            )
    print(f"\n## {base_workers or 'one process'} against Dask workers: speed-up (baseline seconds / these)")
    table(("phase", "workers", "shard-job seconds", "shard jobs", "whole phase", "same fingerprint"), rows)


def child(spec: dict[str, Any], spec_file: Path) -> dict[str, Any]:
    spec_file.write_text(json.dumps(spec))
    out = spec_file.with_suffix(".out.json")
    subprocess.run([sys.executable, __file__, "--phase", str(spec_file), "--out", str(out)], check=True)
    return json.loads(out.read_text())


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[0.1], help="corpus sizes, GB of text")
    p.add_argument("--source", type=Path, default=None, help="jsonl corpus whose sentences are recombined")
    p.add_argument(
        "--dask-workers",
        type=int,
        nargs="+",
        default=[0],
        help="run the shards on a LocalCluster of N workers (0: in one process); several counts, e.g. "
        "`0 2`, run the same dump with each and print the speed-up against the first",
    )
    p.add_argument(
        "--work", type=Path, default=None, help="folder for dumps and data roots (default: a temp one)"
    )
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--doc-chars", type=int, default=7000, help="characters per synthetic document")
    p.add_argument("--dup-share", type=float, default=0.03, help="share of planted near-duplicates")
    p.add_argument("--file-mb", type=float, default=64, help="MB of text per dump file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--set", action="append", default=[], help="config override, e.g. preprocess.near_dedup=false"
    )
    p.add_argument("--dump-only", type=Path, default=None, help="write the first size's dump here and stop")
    p.add_argument("--phase", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.phase:  # the child: one phase, its result as JSON
        args.out.write_text(json.dumps(run_phase(json.loads(args.phase.read_text()))))
        return
    import tempfile

    from tinyllama_model.hardware import machine_line

    args.work = args.work or Path(tempfile.mkdtemp(prefix="bench-data-"))
    print(f"# {machine_line()}")
    print(f"# work folder {args.work}")
    sentences = source_sentences(args.source)
    if args.dump_only:
        print(json.dumps(write_dump(args.dump_only, args.sizes[0], sentences, args)))
        return
    for size in args.sizes:
        bench_size(size, sentences, args)


if __name__ == "__main__":
    main()
