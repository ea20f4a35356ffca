"""Local files as documents: txt, md, html, jsonl and parquet, from files, folders or glob patterns.

A text or HTML file is one document titled by its <title> or file name; a jsonl line or parquet row
is one document whose text is `text_field` and whose title is `title_field` (else the file name and
row number). A file or row that cannot be read (not UTF-8, binary, malformed JSON, no text field,
an HTML bomb, a Parquet file that decodes past `max_decoded_bytes`) is recorded with its reason rather
than dropped silently; a file where *no* row has the text field stops the phase with the fields it does
have, since the config is then clearly wrong. Which files the paths name is `tasks.sources.paths`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from tasks.sources.base import Failure, SourceContext, SourceSummary
from tasks.sources.document import Document, make_doc_id
from tasks.sources.errors import InputError
from tasks.sources.htmltext import HTMLBombError, html_to_text
from tasks.sources.paths import expand_paths

SOURCE = "local"
TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".text")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
TABLE_SUFFIXES = (".jsonl", ".parquet")
SUFFIXES = TEXT_SUFFIXES + HTML_SUFFIXES + TABLE_SUFFIXES


class LocalConfig(BaseModel):
    """Files on this machine (or a mounted share)."""

    paths: list[str] = Field(
        default_factory=list,
        description="Files, folders (read recursively) or glob patterns; empty turns the local source off.",
    )
    text_field: str = Field("text", description="Field (jsonl) or column (parquet) holding the text.")
    title_field: str = Field("title", description="Field or column holding the title, if any.")
    topic_field: str = Field("topic", description="Field or column holding the topic, if any.")
    topic: str | None = Field(None, description="Topic for documents whose file gives none.")
    max_file_bytes: int = Field(
        500_000_000, ge=1, description="Largest file read; bigger files are recorded as failures."
    )
    max_decoded_bytes: int = Field(
        1_000_000_000,
        ge=1,
        description="Largest decoded size of the columns read from one Parquet file (a few KB of compressed "
        "Parquet can decode to gigabytes); bigger files are recorded as failures.",
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


class LocalSource:
    """The files named by `collect.local.paths`, read in path order."""

    name = SOURCE
    remote = False

    def __init__(self, cfg: LocalConfig) -> None:
        self.cfg = cfg

    def collect(self, ctx: SourceContext) -> tuple[list[Document], LocalSummary]:
        docs: list[Document] = []
        failures: list[Failure] = []
        files = expand_paths(self.cfg.paths, SUFFIXES)
        for path in files:
            try:
                docs.extend(_read_file(path, self.cfg, failures))
            except _Unreadable as err:
                failures.append(Failure(str(path), str(err)))
            except OSError as err:  # unreadable (permissions, vanished): this file's failure, not the phase's
                failures.append(Failure(str(path), f"cannot read {path}: {err}"))
        return docs, LocalSummary(
            files=len(files), documents=len(docs), failed=len(failures), failures=failures
        )


def _read_file(path: Path, cfg: LocalConfig, failures: list[Failure]) -> list[Document]:
    """The documents of one file; a bad row is added to `failures`, a bad file raises `_Unreadable`."""
    suffix = path.suffix.lower()
    if path.stat().st_size > cfg.max_file_bytes:
        raise _Unreadable(f"{path} is larger than collect.local.max_file_bytes={cfg.max_file_bytes}")
    if suffix == ".jsonl":
        return _read_jsonl(path, cfg, failures)
    if suffix == ".parquet":
        return _read_parquet(path, cfg, failures)
    if suffix in TEXT_SUFFIXES or suffix in HTML_SUFFIXES:
        return [_read_text_file(path, cfg)]
    raise _Unreadable(f"{path}: unsupported file type {suffix!r} (supported: {', '.join(SUFFIXES)})")


def _decode(path: Path, data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise _Unreadable(f"{path} looks binary (NUL bytes), not text; remove it from collect.local.paths")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _Unreadable(
            f"{path} is not UTF-8 (invalid byte at offset {err.start}); convert it, e.g. "
            f"`iconv -f latin1 -t utf-8 {path.name}`"
        ) from err


def _document(path: Path, key: str, title: str, text: str, topic: str | None, cfg: LocalConfig) -> Document:
    return Document(
        doc_id=make_doc_id(SOURCE, key),
        source=SOURCE,
        title=title,
        text=text,
        url=key,
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
    return _document(path, path.resolve().as_uri(), title, text, None, cfg)


def _read_jsonl(path: Path, cfg: LocalConfig, failures: list[Failure]) -> list[Document]:
    text = _decode(path, path.read_bytes())
    docs, missing_field, keys_seen = [], 0, set()
    # JSON Lines ends records with \n only: str.splitlines() would also split on U+2028, U+0085, ... inside
    # strings (JSON writes them raw), losing records and shifting line numbers.
    lines = [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    for n, line in lines:
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            failures.append(Failure(where, f"malformed JSON: {err.msg} at column {err.colno}"))
            continue
        if not isinstance(row, dict):
            failures.append(Failure(where, f"expected a JSON object, got {type(row).__name__}"))
            continue
        keys_seen.update(row)
        value = row.get(cfg.text_field)
        if not isinstance(value, str):
            missing_field += 1
            failures.append(Failure(where, f"no string field {cfg.text_field!r} (text_field)"))
            continue
        docs.append(_row_document(path, f"L{n}", n, row, value, cfg))
    if lines and not docs and missing_field:
        raise InputError(
            f"{path}: no line has the text field {cfg.text_field!r}; its fields are {sorted(keys_seen)}. "
            f"Set collect.local.text_field to the one holding the text."
        )
    return docs


def _row_document(path: Path, anchor: str, n: int, row: dict, text: str, cfg: LocalConfig) -> Document:
    """A document from one jsonl line or Parquet row; untitled rows are named after file and position."""
    title = row.get(cfg.title_field)
    topic = row.get(cfg.topic_field)
    return _document(
        path,
        f"{path.resolve().as_uri()}#{anchor}",
        str(title) if title else f"{path.stem} {n}",
        text,
        str(topic) if topic else None,
        cfg,
    )


def _read_parquet(path: Path, cfg: LocalConfig, failures: list[Failure]) -> list[Document]:
    """The rows of a Parquet file, its decoded size bounded before reading (metadata) and while reading.

    Text columns are read dictionary-encoded, so a value repeated a million times is held once; the
    size it decodes to is added up batch by batch before any batch becomes Python strings.
    """
    try:
        columns = pq.read_schema(path).names
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise _Unreadable(f"{path} is not a readable Parquet file: {err}") from err
    if cfg.text_field not in columns:
        raise InputError(
            f"{path} has no column {cfg.text_field!r}; its columns are {columns}. "
            f"Set collect.local.text_field to the one holding the text."
        )
    wanted = list(
        dict.fromkeys(c for c in (cfg.text_field, cfg.title_field, cfg.topic_field) if c in columns)
    )
    parquet = pq.ParquetFile(path, read_dictionary=wanted)
    too_big = _Unreadable(
        f"{path} decodes to more than collect.local.max_decoded_bytes={cfg.max_decoded_bytes} bytes; "
        f"split the file or raise the limit"
    )
    if _stored_size(parquet.metadata, wanted) > cfg.max_decoded_bytes:
        raise too_big
    docs, decoded, n = [], 0, 0
    for batch in parquet.iter_batches(columns=wanted):
        decoded += _decoded_size(batch)
        if decoded > cfg.max_decoded_bytes:
            raise too_big
        for row in batch.to_pylist():
            text = row.get(cfg.text_field)
            if not isinstance(text, str):
                failures.append(Failure(f"{path}#row={n}", f"{cfg.text_field!r} is null or not a string"))
            else:
                docs.append(_row_document(path, f"row={n}", n, row, text, cfg))
            n += 1
    return docs


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
