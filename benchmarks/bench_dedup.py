"""Preprocess at scale: the staged, sharded phase against the in-memory reference on the same corpus.

For each corpus size a synthetic collect artifact is written in shards of `--shard-mb`: ~300-word
documents drawn from a Zipf-distributed vocabulary, with ~10% planted near-duplicates (a few words
replaced, inserted and deleted in a copy of an earlier document, anywhere in the corpus, so across
shards) and ~2% exact copies (case and spacing changed). Then, each in a fresh process so its peak RSS
is its own:

  staged     `tasks.preprocess.run_preprocess`: per-shard steps and dedup inputs, exact groups and
             verified LSH pairs per partition, the keep-the-earlier-kept pass, the filter pass; writes
             the clean and rejected shards and publishes the artifact
  reference  the one-pass version (`tests/tasks/preprocess_oracle.py`): every document read into
             memory, the steps over all of them, a dict of exact keys and a datasketch LSH index over
             the kept documents; writes one clean and one rejected table as the phase once did

Per row: wall seconds, raw MB per second, peak RSS of the process (VmHWM, with the imports: the
header gives that of a process that only imports the two),
documents kept, and whether the kept doc_ids equal the reference's (in order). The last lines give
staged/reference ratios and how the staged peak RSS grows with the corpus (it should not: memory
holds one shard or one partition).

    .venv/bin/python benchmarks/bench_dedup.py                    # 50 and 200 MB (~6 min on 2 busy cores)
    .venv/bin/python benchmarks/bench_dedup.py --mb 5 20 --shard-mb 2
    .venv/bin/python benchmarks/bench_dedup.py --mb --corpus path/to/articles.jsonl   # real text only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.preprocess import CLEAN_SCHEMA, REJECTED_SCHEMA, PreprocessConfig, run_preprocess
from tasks.sources.document import DOCUMENT_SCHEMA, Document, make_doc_id
from tasks.storage.artifacts import Artifact, publish
from tasks.storage.shards import ShardWriter, iter_batches
from tests.tasks.preprocess_oracle import clean_documents

CHUNK_DOCS = 1_000  # documents drawn per numpy call


# --- corpus -----------------------------------------------------------------------------------------
def make_vocabulary(size: int, rng: random.Random) -> list[str]:
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))))
    return sorted(words)


def perturb(text: str, vocab: np.ndarray, rng: random.Random) -> str:
    """Paraphrase-level edits: 3 words replaced, 2 inserted, 2 deleted."""
    words = text.split()
    for _ in range(3):
        words[rng.randrange(len(words))] = str(rng.choice(vocab))
    for _ in range(2):
        words.insert(rng.randrange(len(words)), str(rng.choice(vocab)))
    for _ in range(2):
        del words[rng.randrange(len(words))]
    return " ".join(words)


def synthetic_texts(mb: float, seed: int, vocab_size: int = 30_000) -> Iterator[str]:
    """Texts until `mb` megabytes: distinct Zipf prose, ~10% near copies and ~2% exact copies."""
    rng, nprng = random.Random(seed), np.random.default_rng(seed)
    vocab = np.array(make_vocabulary(vocab_size, rng))
    p = 1.0 / np.arange(1, vocab_size + 1) ** 1.1
    p /= p.sum()
    originals: list[str] = []
    size = 0
    while size < mb * 1e6:
        lengths = nprng.integers(250, 350, size=CHUNK_DOCS)
        words = vocab[nprng.choice(vocab_size, size=int(lengths.sum()), p=p)]
        cuts = np.r_[0, np.cumsum(lengths)]
        for k in range(CHUNK_DOCS):
            roll = rng.random()
            if originals and roll < 0.10:
                text = perturb(rng.choice(originals), vocab, rng)
            elif originals and roll < 0.12:
                text = "  ".join(rng.choice(originals).upper().split(" "))
            else:
                doc_words = words[cuts[k] : cuts[k + 1]]
                sentences = [
                    " ".join(doc_words[s : s + 15]).capitalize() + "." for s in range(0, len(doc_words), 15)
                ]
                text = " ".join(sentences)
                originals.append(text)
            size += len(text.encode())
            yield text
            if size >= mb * 1e6:
                return


def jsonl_texts(path: Path) -> Iterator[tuple[str, str]]:
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            yield row["title"], row["content"]


def write_corpus(root: Path, titled: Iterator[tuple[str, str]], shard_mb: float) -> tuple[Artifact, int, int]:
    """A collect artifact of these (title, text) documents in shards; (artifact, documents, bytes)."""
    counts = {"docs": 0, "bytes": 0}

    def build(staging: Path) -> dict[str, int]:
        with ShardWriter(staging, "documents", DOCUMENT_SCHEMA, max_bytes=int(shard_mb * 2**20)) as w:
            for title, text in titled:
                doc = Document(make_doc_id("local", title), "local", title, text)
                w.write_rows([doc.__dict__])
                counts["docs"] += 1
                counts["bytes"] += len(text.encode())
        return dict(counts)

    return publish(
        root, "collect", hashlib.sha256(str(root).encode()).hexdigest()[:20], build
    ), *counts.values()


# --- one method, in a child process --------------------------------------------------------------------
def run_child(method: str, artifact_file: Path) -> dict[str, object]:
    if method == "imports":
        return {"peak_rss_mb": peak_rss_mb()}
    raw = Artifact.model_validate_json(artifact_file.read_text())
    cfg = PreprocessConfig()
    start = time.perf_counter()
    if method == "staged":
        out = run_preprocess(cfg, raw, artifact_file.parent / "staged-root")
        kept = [i for b in iter_batches(out.shard_paths("documents"), ["doc_id", "part"]) for i in _firsts(b)]
    else:
        docs = [
            Document.from_record(r) for b in iter_batches(raw.shard_paths("documents")) for r in b.to_pylist()
        ]
        result = clean_documents(docs, cfg)
        folder = Path(tempfile.mkdtemp(dir=artifact_file.parent))
        pq.write_table(pa.Table.from_pylist(result.rows, schema=CLEAN_SCHEMA), folder / "documents.parquet")
        pq.write_table(
            pa.Table.from_pylist(result.rejected, schema=REJECTED_SCHEMA), folder / "rejected.parquet"
        )
        kept = [r["doc_id"] for r in result.rows if r["part"] == 0]
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
        "kept": len(kept),
        "kept_sha": hashlib.sha256("\n".join(kept).encode()).hexdigest(),
    }


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM: ru_maxrss would carry the parent's peak across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _firsts(batch) -> list[str]:
    return [
        i
        for i, part in zip(*(batch.column(c).to_pylist() for c in ("doc_id", "part")), strict=True)
        if not part
    ]


def measure(method: str, artifact: Artifact, folder: Path) -> dict[str, object]:
    spec = folder / "artifact.json"
    spec.write_text(artifact.model_dump_json())
    cmd = [sys.executable, __file__, "--child", method, "--artifact", str(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the table ---------------------------------------------------------------------------------------
HEADER = "| corpus | MB | docs | shards | method | seconds | MB/s | peak RSS MB | kept | same kept set |"


def row(name: str, mb: float, docs: int, shards: int, method: str, r: dict, same: str) -> str:
    return (
        f"| {name} | {mb:.1f} | {docs:,} | {shards} | {method} | {r['seconds']:.1f} | "
        f"{mb / r['seconds']:.2f} | {r['peak_rss_mb']:.0f} | {r['kept']:,} | {same} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, nargs="*", default=[50.0, 200.0], help="synthetic corpus sizes")
    parser.add_argument("--shard-mb", type=float, default=16.0, help="raw shard size (uncompressed MB)")
    parser.add_argument("--corpus", type=Path, help="a jsonl of real articles (title, content) as well")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=["staged", "reference", "imports"], help=argparse.SUPPRESS)
    parser.add_argument("--artifact", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.artifact)))
        return

    from tinyllama_model.hardware import machine_line  # torch: not in the measured children

    print(machine_line())
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "artifact.json"
        spec.write_text("{}")
        cmd = [sys.executable, __file__, "--child", "imports", "--artifact", str(spec)]
        baseline = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    print(f"peak RSS of a process that only imports both: {baseline['peak_rss_mb']:.0f} MB\n")
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    corpora = [(f"synthetic {mb:g} MB", mb) for mb in args.mb]
    if args.corpus:
        corpora.append((args.corpus.name, 0.0))
    staged_rss: list[tuple[float, float]] = []
    for name, mb in corpora:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            if mb:
                titled = ((f"doc {k}", t) for k, t in enumerate(synthetic_texts(mb, args.seed)))
            else:
                titled = jsonl_texts(args.corpus)
            artifact, docs, size = write_corpus(folder / "root", titled, args.shard_mb)
            results = {m: measure(m, artifact, folder) for m in ("staged", "reference")}
            same = "yes" if results["staged"]["kept_sha"] == results["reference"]["kept_sha"] else "NO"
            for method, r in results.items():
                print(
                    row(name, size / 1e6, docs, len(artifact.shards["documents"]), method, r, same),
                    flush=True,
                )
            s, ref = results["staged"], results["reference"]
            print(
                f"|  |  |  |  | staged / reference | {s['seconds'] / ref['seconds']:.2f}x |  | "
                f"{s['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x |  |  |",
                flush=True,
            )
            if mb:
                staged_rss.append((size / 1e6, s["peak_rss_mb"]))
    if len(staged_rss) > 1:
        (small, rss_small), (large, rss_large) = min(staged_rss), max(staged_rss)
        print(
            f"\nstaged peak RSS, {large:.0f} MB corpus against {small:.0f} MB: {rss_large / rss_small:.2f}x "
            f"({rss_large:.0f} / {rss_small:.0f} MB) for {large / small:.1f}x the text"
        )


if __name__ == "__main__":
    main()
