"""Token shards: one clean `documents` shard encoded into `train-NNNNN.parquet` and `val-NNNNN.parquet`.

This is the encode phase's per-shard job (`tasks/shard_map.py`): a module-level function of a small
job, so a Dask worker can run it, that writes its two shards into the phase's work folder and returns
their names and counts. Shard k of the clean table gives shard k of each split (a side with no rows
gets no file), so the output names are fixed by the input and a finished shard is recognised by its
`done-NNNNN.json` record, written after both files: a phase killed halfway redoes only the shards that
have no record.

Rows: `doc_id`, `tokens` (list<uint16>, or list<uint32> past 65,536 ids), `n_bytes` (the UTF-8 size
of the text, the denominator of bits per byte). Documents are never joined here; the trainer packs them.

Every document's ids are decoded and compared with its text before they are written (`roundtrip_failures`):
a tokenizer that would change a text fails the shard with `RoundTripError`, and no file of it is kept.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import socket
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.corpus_sample import DocSplit, iter_documents
from tasks.storage.shards import ShardWriter, iter_batches, shard_name
from tinyllama_model.files import atomic_write
from tinyllama_model.tokenizer import Tokenizer, token_dtype

SPLITS = ("train", "val")
# A token shard is as big as the clean shard it comes from; the writer's own roll-over never splits it.
ONE_FILE = 2**62


class RoundTripError(ValueError):
    """decode(encode(text)) did not give back the normalised text: the tokenizer would lose information."""


def roundtrip_failures(
    tok: Tokenizer, ids: list[str], texts: list[str], encoded: list[list[int]], num_threads: int
) -> list[str]:
    """The doc_ids whose decoded ids differ from their normalised text.

    The decoded text is compared with the text itself first: the clean corpus is NFKC already, so nearly
    every document matches as it is, and only the others pay for SentencePiece's normaliser.
    """
    decoded = tok.decode_batch(encoded, num_threads=num_threads)
    differ = [i for i, (a, b) in enumerate(zip(decoded, texts, strict=True)) if a != b]
    if not differ:
        return []
    normal = tok.normalize_batch([texts[i] for i in differ])
    return [ids[i] for i, n in zip(differ, normal, strict=True) if decoded[i] != n]


def roundtrip_error(failures: list[str], documents: int, where: str) -> RoundTripError:
    return RoundTripError(
        f"decode(encode(text)) != normalise(text) for {len(failures)} of {documents} documents of {where} "
        f"(first: {failures[:5]}); the tokenizer would change these texts. Check them for characters "
        "SentencePiece reserves (U+2581) or control characters, and clean them in the preprocess phase"
    )


def token_schema(vocab_size: int) -> pa.Schema:
    value_type = pa.uint16() if token_dtype(vocab_size) == np.uint16 else pa.uint32()
    return pa.schema([("doc_id", pa.string()), ("tokens", pa.list_(value_type)), ("n_bytes", pa.int64())])


def _token_column(encoded: list[list[int]], dtype: np.dtype, value_type: pa.DataType) -> pa.Array:
    lengths = np.fromiter((len(t) for t in encoded), dtype=np.int32, count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)  # one batch of documents stays far below 2**31
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(itertools.chain.from_iterable(encoded), dtype=dtype, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(offsets, pa.array(values, type=value_type))


def _token_table(
    ids: list[str],
    encoded: list[list[int]],
    n_bytes: list[int],
    rows: list[int],
    schema: pa.Schema,
    dtype: np.dtype,
) -> pa.Table:
    """The rows `rows` of one batch as a table of the token schema."""
    return pa.Table.from_arrays(
        [
            pa.array([ids[i] for i in rows], pa.string()),
            _token_column([encoded[i] for i in rows], dtype, schema.field("tokens").type.value_type),
            pa.array([n_bytes[i] for i in rows], pa.int64()),
        ],
        schema=schema,
    )


@dataclass(frozen=True)
class EncodeJob:
    """Encode clean shard `index` (at `source`) with the tokenizer at `tokenizer`, into `work`."""

    index: int
    source: str
    tokenizer: str
    work: str
    split: DocSplit
    batch_docs: int
    num_threads: int
    cache_words: int


@functools.lru_cache(maxsize=1)
def loaded_tokenizer(path: str, size: int, mtime_ns: int) -> Tokenizer:
    """One Tokenizer per process and model file, so its word cache carries over from shard to shard."""
    return Tokenizer(path)


def done_record(work: Path, index: int) -> Path:
    return work / f"done-{index:05d}.json"


def encode_shard(job: EncodeJob) -> dict[str, Any]:
    """Write train/val shard `job.index` (unless a record says it is done) and return names and counts."""
    work = Path(job.work)
    record = done_record(work, job.index)
    if record.is_file():
        return json.loads(record.read_text())
    for needed in (Path(job.source), Path(job.tokenizer)):
        if not needed.is_file():
            raise FileNotFoundError(
                f"{needed} is not on this machine ({socket.gethostname()}): the encode jobs read the clean "
                "shards and the tokenizer where the flow put them, so Dask workers must see the same local "
                "data root folder (a shared file system)"
            )
    stat = os.stat(job.tokenizer)
    tok = loaded_tokenizer(job.tokenizer, stat.st_size, stat.st_mtime_ns)
    schema = token_schema(tok.vocab_size)
    dtype = token_dtype(tok.vocab_size)
    counts = {s: {"docs": 0, "tokens": 0, "bytes": 0} for s in SPLITS}
    failures: list[str] = []
    with ExitStack() as stack:  # on an error the open shards are dropped, never renamed into place
        writers = {
            s: stack.enter_context(ShardWriter(work, s, schema, max_bytes=ONE_FILE, first_index=job.index))
            for s in SPLITS
        }
        for ids, texts in iter_documents([Path(job.source)], job.batch_docs):
            encoded = tok.encode_batch(texts, job.num_threads, cache_words=job.cache_words)
            failures += roundtrip_failures(tok, ids, texts, encoded, job.num_threads)
            n_bytes = [len(t.encode()) for t in texts]
            is_val = [job.split.is_val(d) for d in ids]
            for split in SPLITS:
                rows = [i for i, v in enumerate(is_val) if v == (split == "val")]
                if rows:
                    writers[split].write_table(_token_table(ids, encoded, n_bytes, rows, schema, dtype))
                    c = counts[split]
                    c["docs"] += len(rows)
                    c["tokens"] += sum(len(encoded[i]) for i in rows)
                    c["bytes"] += sum(n_bytes[i] for i in rows)
        if failures:
            raise roundtrip_error(failures, sum(c["docs"] for c in counts.values()), f"shard {job.source}")
        files = {s: writers[s].close() for s in SPLITS}
    result: dict[str, Any] = {"index": job.index, "files": files}
    result.update({f"{s}_{k}": v for s in SPLITS for k, v in counts[s].items()})
    atomic_write(record, json.dumps(result))  # last: the shard counts as done only once both files exist
    return result


def place_shards(results: Sequence[dict[str, Any]], work: Path, out: Path) -> dict[str, list[str]]:
    """Link the finished shards into the artifact being published, numbered 0, 1, ... per split.

    A clean shard with no row of a split leaves a gap in the work folder's indices; the artifact's tables
    are contiguous. Links, not moves: the work folder stays whole until the artifact is published.
    """
    placed: dict[str, list[str]] = {s: [] for s in SPLITS}
    for result in sorted(results, key=lambda r: r["index"]):
        for split in SPLITS:
            for name in result["files"][split]:
                target = shard_name(split, len(placed[split]))
                if not (work / name).is_file():
                    raise FileNotFoundError(
                        f"encode shard {name} finished on a worker but is not in {work} here: the workers "
                        "and the flow must see the same data root folder (a shared file system)"
                    )
                try:
                    os.link(work / name, out / target)
                except OSError:  # a work folder on another file system than the artifact
                    shutil.copyfile(work / name, out / target)
                placed[split].append(target)
    return placed


def iter_token_docs(paths: Sequence[Path], batch_rows: int = 256) -> Iterator[tuple[str, np.ndarray, int]]:
    """(doc_id, tokens, n_bytes) for every row of these token shards, in order, one batch in memory."""
    for batch in iter_batches(paths, ["doc_id", "tokens", "n_bytes"], batch_rows):
        col = batch.column("tokens")
        values = col.values.to_numpy(zero_copy_only=False)
        offsets = col.offsets.to_numpy()
        ids, sizes = batch.column("doc_id").to_pylist(), batch.column("n_bytes").to_pylist()
        for i, (doc_id, n_bytes) in enumerate(zip(ids, sizes, strict=True)):
            yield doc_id, values[offsets[i] - offsets[0] : offsets[i + 1] - offsets[0]], n_bytes
