"""Local files as documents: txt, md, html, jsonl and parquet, from files, folders or glob patterns.

A text or HTML file is one document titled by its <title> or file name; a jsonl line or parquet row
is one document whose text is `text_field` and whose title is `title_field` (else the file name and
row number). A file or row that cannot be read (not UTF-8, binary, malformed JSON, no text field,
an HTML bomb, a Parquet file that decodes past `max_decoded_bytes`) is recorded with its reason rather
than dropped silently; a file where *no* row has the text field stops the phase with the fields it does
have, since the config is then clearly wrong. Which files the paths name is `tasks.sources.paths`.

A dump (thousands of Parquet shards, tens of GB) streams through: files are grouped into jobs of about
one output shard (`plan`), each job (`read_job`, module-level so a Dask worker can run it) reads its
files a Parquet batch or a jsonl line at a time into its own shards and saves its result beside them,
so a rerun after a crash reads again only the jobs that had not finished. A `url_field` column (a
dump's article URL) becomes the document's url; its id stays that of the file and row, so two files
holding the same page give two rows. Memory holds one batch of Python strings; Arrow holds the
distinct text values of one input row group (text columns are read dictionary-encoded, see
`_read_parquet`), so it follows the input's row-group size, never the corpus.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from tasks.sources.base import Failure, SourceContext, SourceSummary
from tasks.sources.document import Document, make_doc_id
from tasks.sources.errors import InputError
from tasks.sources.htmltext import HTMLBombError, html_to_text
from tasks.sources.paths import expand_paths
from tasks.sources.sink import DocumentShards, DocumentSink, ShardPart
from tinyllama_model.files import atomic_write

SOURCE = "local"
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".text")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
TABLE_SUFFIXES = (".jsonl", ".parquet")
SUFFIXES = TEXT_SUFFIXES + HTML_SUFFIXES + TABLE_SUFFIXES
BATCH_ROWS = 1024  # Parquet rows decoded at a time: what one batch holds in memory, as Python strings
BINARY_SNIFF_BYTES = 8192  # a text file with a NUL byte this near its start is binary
RESULT = "result.json"  # a finished job's result, beside its shards
_BINARY = "looks binary (NUL bytes), not text; remove it from collect.local.paths"
_TOO_BIG = "decodes to more than collect.local.max_decoded_bytes={} bytes; split the file or raise the limit"


class LocalConfig(BaseModel):
    """Files on this machine (or a mounted share)."""

    paths: list[str] = Field(
        default_factory=list,
        description="Files, folders (read recursively) or glob patterns; empty turns the local source off.",
    )
    text_field: str = Field("text", description="Field (jsonl) or column (parquet) holding the text.")
    title_field: str = Field("title", description="Field or column holding the title, if any.")
    url_field: str = Field(
        "url", description="Field or column holding the document's URL, if any (a dump's article URL)."
    )
    topic_field: str = Field("topic", description="Field or column holding the topic, if any.")
    id_field: str | None = Field(
        None,
        description="Field or column holding a stable id of each record (a dump's article `id`): a row's "
        "document id then comes from it instead of its file and position, so the validation split survives "
        "moving, renaming or re-cutting the files. None (or a row without it): file and position.",
    )
    topic: str | None = Field(None, description="Topic for documents whose file gives none.")
    max_file_bytes: int = Field(
        500_000_000, ge=1, description="Largest file read; bigger files are recorded as failures."
    )
    max_decoded_bytes: int = Field(
        1_000_000_000,
        ge=1,
        description="Largest decoded size of the columns read from one Parquet file (a few KB of compressed "
        "Parquet can decode to gigabytes); bigger files are recorded as failures (rows read before a "
        "dictionary-encoded excess shows up are kept).",
    )
    max_html_depth: int = Field(2000, ge=10, description="Deepest HTML nesting parsed (HTML bomb guard).")


class _Unreadable(InputError):
    """This file (not the config) is the problem: record it and carry on with the others."""


@dataclass(frozen=True)
class LocalSummary(SourceSummary):
    files: int
    documents: int
    failed: int
    failures: list[Failure]


@dataclass(frozen=True)
class LocalJob:
    """A group of input files read by one job into its own folder (about one output shard)."""

    files: tuple[str, ...]
    cfg: LocalConfig
    folder: str
    max_bytes: int


@dataclass(frozen=True)
class LocalResult:
    """What a job wrote and what it could not read; saved beside its shards so a rerun reuses it."""

    part: ShardPart
    files: int
    failures: tuple[Failure, ...]

    def to_json(self) -> dict[str, Any]:
        failures = [dataclasses.asdict(f) for f in self.failures]
        return {"part": self.part.to_json(), "files": self.files, "failures": failures}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LocalResult:
        failures = tuple(Failure(**f) for f in data["failures"])
        return cls(ShardPart.from_json(data["part"]), int(data["files"]), failures)


class LocalSource:
    """The files named by `collect.local.paths`, read in path order."""

    name = SOURCE
    remote = False

    def __init__(self, cfg: LocalConfig) -> None:
        self.cfg = cfg

    def files(self) -> list[Path]:
        """The files the paths name, each real file once (two links to one file would repeat its ids)."""
        return list({p.resolve(): p for p in expand_paths(self.cfg.paths, SUFFIXES)}.values())

    def collect(self, ctx: SourceContext, out: DocumentSink) -> LocalSummary:
        """Every file into `out`, here, one after the other (the phase runs `plan`'s jobs instead)."""
        files = self.files()
        documents, failures = _read_files(files, self.cfg, out)
        return LocalSummary(files=len(files), documents=documents, failed=len(failures), failures=failures)

    @property
    def job(self) -> Callable[[LocalJob], LocalResult]:
        return read_job

    def plan(self, folder: Path, max_bytes: int) -> list[LocalJob]:
        """Files in path order, grouped until a group's estimated decoded size reaches `max_bytes`.

        A job's folder is named by a hash of its files (path, size, modification time), the config and
        the shard size: a rerun finds a finished job's folder under the same name, a changed file not.
        """
        jobs: list[LocalJob] = []
        group: list[tuple[Path, os.stat_result]] = []
        size = 0
        for path in self.files():
            stat = path.stat()
            group.append((path, stat))
            size += _estimated_size(path, stat, self.cfg)
            if size >= max_bytes:
                jobs.append(self._job(group, folder, max_bytes))
                group, size = [], 0
        if group:
            jobs.append(self._job(group, folder, max_bytes))
        return jobs

    def _job(self, group: list[tuple[Path, os.stat_result]], folder: Path, max_bytes: int) -> LocalJob:
        files = [(str(p), st.st_size, st.st_mtime_ns) for p, st in group]
        key = json.dumps([self.cfg.model_dump(mode="json"), max_bytes, files], sort_keys=True)
        name = hashlib.sha256(key.encode()).hexdigest()[:16]
        return LocalJob(tuple(str(p) for p, _ in group), self.cfg, str(folder / name), max_bytes)

    def summarize(self, results: Sequence[LocalResult]) -> LocalSummary:
        failures = [f for r in results for f in r.failures]
        return LocalSummary(
            files=sum(r.files for r in results),
            documents=sum(r.part.documents for r in results),
            failed=len(failures),
            failures=failures,
        )


def read_job(job: LocalJob) -> LocalResult:
    """Read one job's files into shards in its folder; a job finished before is returned, not redone."""
    folder = Path(job.folder)
    if (done := _finished(folder)) is not None:
        return done
    shutil.rmtree(folder, ignore_errors=True)  # what a killed attempt left
    with DocumentShards(folder, job.max_bytes) as out:
        _, failures = _read_files([Path(f) for f in job.files], job.cfg, out)
        part = out.close()
    result = LocalResult(part, len(job.files), tuple(failures))
    atomic_write(folder / RESULT, json.dumps(result.to_json(), ensure_ascii=False))
    return result


def _finished(folder: Path) -> LocalResult | None:
    """The saved result of a finished job whose shards are all still there, else None."""
    try:
        result = LocalResult.from_json(json.loads((folder / RESULT).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return result if all(p.is_file() for p in result.part.paths()) else None


def _estimated_size(path: Path, stat: os.stat_result, cfg: LocalConfig) -> int:
    """Bytes a file adds to a shard: a Parquet file's text columns as stored uncompressed, else its size."""
    if path.suffix.lower() != ".parquet":
        return stat.st_size
    try:
        metadata = pq.read_metadata(path)
        columns = metadata.schema.to_arrow_schema().names
    except Exception:  # not Parquet after all: its job records why
        return stat.st_size
    return _stored_size(metadata, _wanted(columns, cfg))


def _read_files(files: Sequence[Path], cfg: LocalConfig, out: DocumentSink) -> tuple[int, list[Failure]]:
    """Every document of `files` into `out`: how many, and what could not be read, by file or by row."""
    failures: list[Failure] = []
    documents = 0
    for path in files:
        try:
            for doc in _read_file(path, cfg, failures):
                out.write(doc)
                documents += 1
        except _Unreadable as err:
            failures.append(Failure(str(path), str(err)))
        except OSError as err:  # unreadable (permissions, vanished): this file's failure, not the phase's
            failures.append(Failure(str(path), f"cannot read {path}: {err}"))
    return documents, failures


def _read_file(path: Path, cfg: LocalConfig, failures: list[Failure]) -> Iterator[Document]:
    """The documents of one file; a bad row is added to `failures`, a bad file raises `_Unreadable`."""
    suffix = path.suffix.lower()
    if path.stat().st_size > cfg.max_file_bytes:
        raise _Unreadable(f"{path} is larger than collect.local.max_file_bytes={cfg.max_file_bytes}")
    if suffix == ".jsonl":
        return _read_jsonl(path, cfg, failures)
    if suffix == ".parquet":
        return _read_parquet(path, cfg, failures)
    if suffix in TEXT_SUFFIXES or suffix in HTML_SUFFIXES:
        return iter([_read_text_file(path, cfg)])
    raise _Unreadable(f"{path}: unsupported file type {suffix!r} (supported: {', '.join(SUFFIXES)})")


def _decode(path: Path, data: bytes) -> str:
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        raise _Unreadable(f"{path} {_BINARY}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _Unreadable(
            f"{path} is not UTF-8 (invalid byte at offset {err.start}); convert it, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name}`"
        ) from err


def _document(
    key: str, title: str, text: str, topic: str | None, url: str | None, cfg: LocalConfig
) -> Document:
    return Document(
        doc_id=make_doc_id(SOURCE, key),
        source=SOURCE,
        title=title,
        text=text,
        url=url or key,
        topic=topic or cfg.topic,
    )


def _read_text_file(path: Path, cfg: LocalConfig) -> Document:
    text = _decode(path, path.read_bytes())
    title = path.stem
    if path.suffix.lower() in HTML_SUFFIXES:
        try:
            html_title, text = html_to_text(text, max_depth=cfg.max_html_depth)
        except HTMLBombError as err:
            raise _Unreadable(f"{path}: {err}") from err
        title = html_title or title
    return _document(path.resolve().as_uri(), title, text, None, None, cfg)


def _jsonl_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every line, read one at a time; a binary file is refused first.

    JSON Lines ends records with \n only, and so does a binary file's line iteration: str.splitlines()
    would also split on U+2028, U+0085, ... inside strings (JSON writes them raw), losing records and
    shifting line numbers.
    """
    with open(path, "rb") as f:
        if b"\x00" in f.read(BINARY_SNIFF_BYTES):
            raise _Unreadable(f"{path} {_BINARY}")
        f.seek(0)
        yield from enumerate(f, start=1)


def _read_jsonl(path: Path, cfg: LocalConfig, failures: list[Failure]) -> Iterator[Document]:
    documents, missing_field, keys_seen = 0, 0, set()
    uri = path.resolve().as_uri()
    for n, raw in _jsonl_lines(path):
        where = f"{path}:{n}"
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as err:
            failures.append(Failure(where, f"not UTF-8 (invalid byte at column {err.start})"))
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            failures.append(Failure(where, f"malformed JSON: {err.msg} at column {err.colno}"))
            continue
        if not isinstance(row, dict):
            failures.append(Failure(where, f"expected a JSON object, got {type(row).__name__}"))
            continue
        if not documents:  # the fields are named only when no row had the text field
            keys_seen.update(row)
        value = row.get(cfg.text_field)
        if not isinstance(value, str):
            missing_field += 1
            failures.append(Failure(where, f"no string field {cfg.text_field!r} (text_field)"))
            continue
        documents += 1
        yield _row_document(uri, path.stem, f"L{n}", n, row, value, cfg)
    if not documents and missing_field:
        raise InputError(
            f"{path}: no line has the text field {cfg.text_field!r}; its fields are {sorted(keys_seen)}. "
            f"Set collect.local.text_field to the one holding the text."
        )


def _row_document(
    uri: str, stem: str, anchor: str, n: int, row: dict, text: str, cfg: LocalConfig
) -> Document:
    """A document from one jsonl line or Parquet row; untitled rows are named after file and position.

    Its id comes from the row's `id_field` when it has one, else from the file and the position (two
    files holding the same page then stay two rows); a `url_field` (a dump's article URL) is kept as
    the document's url.
    """
    title, topic, url = (row.get(f) for f in (cfg.title_field, cfg.topic_field, cfg.url_field))
    record_id = row.get(cfg.id_field) if cfg.id_field else None
    return _document(
        f"{cfg.id_field}={record_id}" if record_id is not None else f"{uri}#{anchor}",
        str(title) if title else f"{stem} {n}",
        text,
        str(topic) if topic else None,
        str(url) if url else None,
        cfg,
    )


def _wanted(columns: Sequence[str], cfg: LocalConfig) -> list[str]:
    fields = (cfg.text_field, cfg.title_field, cfg.url_field, cfg.topic_field, cfg.id_field)
    return list(dict.fromkeys(c for c in fields if c in columns))


def _read_parquet(path: Path, cfg: LocalConfig, failures: list[Failure]) -> Iterator[Document]:
    """The rows of a Parquet file, one batch at a time, its decoded size bounded before and while reading.

    Text columns are read dictionary-encoded, so a value repeated a million times is held once; the
    size it decodes to is added up batch by batch before any batch becomes Python strings. A file
    that turns out too big or damaged part way keeps the rows before and is recorded as a failure.
    """
    try:
        metadata = pq.read_metadata(path)
        columns = metadata.schema.to_arrow_schema().names
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise _Unreadable(f"{path} is not a readable Parquet file: {err}") from err
    wanted = _wanted(columns, cfg)
    if cfg.text_field not in wanted:
        raise InputError(
            f"{path} has no column {cfg.text_field!r}; its columns are {columns}. "
            f"Set collect.local.text_field to the one holding the text."
        )
    if _stored_size(metadata, wanted) > cfg.max_decoded_bytes:
        raise _Unreadable(f"{path} {_TOO_BIG.format(cfg.max_decoded_bytes)}")
    decoded, n, uri = 0, 0, path.resolve().as_uri()
    try:
        with pq.ParquetFile(path, read_dictionary=wanted) as parquet:
            for batch in parquet.iter_batches(columns=wanted, batch_size=BATCH_ROWS):
                decoded += _decoded_size(batch)
                if decoded > cfg.max_decoded_bytes:
                    raise _Unreadable(f"{path} {_TOO_BIG.format(cfg.max_decoded_bytes)} (stopped at row {n})")
                for row in batch.to_pylist():
                    text = row.get(cfg.text_field)
                    if isinstance(text, str):
                        yield _row_document(uri, path.stem, f"row={n}", n, row, text, cfg)
                    else:
                        failures.append(
                            Failure(f"{path}#row={n}", f"{cfg.text_field!r} is null or not a string")
                        )
                    n += 1
    except (pa.ArrowException, OSError) as err:
        raise _Unreadable(f"{path} is damaged after row {n}: {err}") from err


def _stored_size(metadata: pq.FileMetaData, columns: list[str]) -> int:
    """Uncompressed bytes of `columns` as stored: the least they decode to (dictionaries can hide more)."""
    total = 0
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            if chunk.path_in_schema in columns:
                total += chunk.total_uncompressed_size
    return total


def _decoded_size(batch: pa.RecordBatch) -> int:
    """Bytes `batch` takes once decoded: dictionary columns counted value by value, without expanding."""
    total = 0
    for column in batch.columns:
        if pa.types.is_dictionary(column.type) and _is_bytes(column.type.value_type):
            lengths = pc.take(pc.binary_length(column.dictionary), column.indices)
            total += (pc.sum(lengths).as_py() or 0) + 8 * len(column)  # the values and their offsets
        elif pa.types.is_dictionary(column.type):
            total += pc.take(column.dictionary, column.indices).nbytes
        else:
            total += column.nbytes
    return total


def _is_bytes(kind: pa.DataType) -> bool:
    return any(
        check(kind)
        for check in (
            pa.types.is_string,
            pa.types.is_large_string,
            pa.types.is_binary,
            pa.types.is_large_binary,
        )
    )
