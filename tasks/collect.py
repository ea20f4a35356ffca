"""Phase 1, collect: the configured sources -> the sharded table `documents` (one row per raw document,
`documents-00000.parquet`, ...) + summary.

Sources are switched on in the config: `wikipedia.enabled`, `web.urls` (non-empty), `local.paths`
(non-empty) and `builtin` (the offline corpus). The default is the full Wikipedia build; the demo
preset turns Wikipedia off and `builtin` on. Each source is an object of the one shape in
`tasks.sources.base`; this module builds the enabled ones and loops over them.

Collect's input is the outside world, so its artifact fingerprint hashes WHAT was collected (doc ids,
revisions, text hashes) plus the config: a scheduled re-run that finds nothing changed lands on the
same fingerprint and everything downstream stays cached. A pointer `<root>/collect/latest-<config>.json`
names the last artifact of this config, so the next run re-downloads only pages whose revision
changed. Work in progress lives in `<root>/collect/.work-<config>/` until the artifact is published:
a retried or restarted collection resumes there instead of starting over.

Nothing holds the corpus: each source writes its documents into shards in the work folder as it
goes (`tasks.sources.sink`), a sharded source (local files) as jobs run by the mapper, one folder per
job, and the finish lays every part's shards end to end in the artifact. The content digest is summed
per document (`tasks.sources.document.ContentDigest`), so it does not depend on the shard size or on
the order in which jobs finished.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from functools import partial, reduce
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks import markdown as md
from tasks.monitoring.progress_artifact import PagesBar, ProgressBar
from tasks.redact import redact_url, redact_value
from tasks.retries import retry_only_on
from tasks.shard_map import Mapper, serial_map, task_map
from tasks.sources.base import PreviousDocuments, ShardedSource, Source, SourceContext, SourceSummary
from tasks.sources.builtin import BuiltinSource
from tasks.sources.document import DOCUMENTS_TABLE, ContentDigest
from tasks.sources.errors import InputError, TransientSourceError
from tasks.sources.local import LocalConfig, LocalSource
from tasks.sources.progress import ProgressLog
from tasks.sources.sink import DocumentShards, ShardPart
from tasks.sources.web import WebConfig, WebSource
from tasks.sources.wikipedia import WikipediaConfig, WikipediaSource, WikipediaSummary
from tasks.storage.artifacts import (
    Artifact,
    load_artifact,
    phase_fingerprint,
    publish,
    scratch_dir,
    work_lock,
)
from tasks.storage.data_root import DataRoot
from tasks.storage.shards import shard_name
from tinyllama_model.config_fields import operational, result_fields
from tinyllama_model.errors import ConfigError

CODE_VERSION = "2"  # 2: documents as shards, content digest summed per document
SUMMARY_FILE = "summary.json"
MAX_FAILURES_IN_STATS = 20


class CollectConfig(BaseModel):
    """Where the raw text comes from. Each source is off unless switched on here."""

    user_agent: str | None = Field(
        None,
        description="HTTP User-Agent naming this client and a contact (e-mail or URL), required by Wikimedia "
        "for the wikipedia and web sources, e.g. 'tinyllama-pipeline/0.1 (you@example.org)'.",
        json_schema_extra=operational(),
    )
    builtin: bool = Field(
        False, description="Include the built-in offline corpus (Python's own documentation, ~1 MB)."
    )
    wikipedia: WikipediaConfig = Field(
        default_factory=WikipediaConfig, description="Wikipedia articles by search topic."
    )
    web: WebConfig = Field(default_factory=WebConfig, description="Individual web pages.")
    local: LocalConfig = Field(default_factory=LocalConfig, description="Local files and folders.")
    shard_mb: float = Field(
        32.0,
        gt=0,
        description="Size of one documents shard, in MB of uncompressed Arrow data; a local-files job reads "
        "about this much, and each later phase runs one job per shard, so smaller shards spread a corpus "
        "over more workers (and hold less each). Changes only how the table is cut (the fingerprint "
        "hashes the content).",
        json_schema_extra=operational(),
    )
    resume_max_age_h: float = Field(
        24.0,
        gt=0,
        description="An interrupted collection younger than this (hours) is resumed; older work is dropped.",
        json_schema_extra=operational(),
    )


def content_config(cfg: CollectConfig) -> dict[str, Any]:
    """The part of the config that decides what is collected (fields marked operational left out)."""
    return result_fields(cfg)


def config_fingerprint(cfg: CollectConfig) -> str:
    return phase_fingerprint("collect-config", CODE_VERSION, cfg=content_config(cfg))


def shard_bytes(cfg: CollectConfig) -> int:
    return max(1, int(cfg.shard_mb * 2**20))


def build_sources(cfg: CollectConfig, *, sleep: Callable[[float], None] = time.sleep) -> list[Source]:
    """The switched-on sources, in the order their documents are listed.

    Fails before any work when the config cannot produce documents (no source on, no User-Agent for a
    network source).
    """
    sources: list[Source] = []
    if cfg.builtin:
        sources.append(BuiltinSource())
    if cfg.local.paths:
        sources.append(LocalSource(cfg.local))
    if cfg.web.urls:
        sources.append(WebSource(cfg.web, cfg.user_agent, sleep=sleep))
    if cfg.wikipedia.enabled:
        sources.append(WikipediaSource(cfg.wikipedia, cfg.user_agent, sleep=sleep))
    if not sources:
        raise ConfigError(
            "no collect source is switched on: set collect.wikipedia.enabled=true, collect.builtin=true, "
            "or give collect.web.urls / collect.local.paths"
        )
    return sources


def _pointer(config_fp: str) -> tuple[str, str]:
    return "collect", f"latest-{config_fp}.json"  # under the data root, local or object store


def previous_artifact(root: str | Path, cfg: CollectConfig) -> Artifact | None:
    """The last published collect artifact of this config, if it is still complete (checked)."""
    pointer = DataRoot.parse(root).read_bytes(*_pointer(config_fingerprint(cfg)))
    if pointer is None:
        return None
    fingerprint = json.loads(pointer).get("fingerprint", "")
    return load_artifact(root, "collect", fingerprint)


def _previous_shards(root: str | Path, cfg: CollectConfig, used: list[Artifact]) -> list[Path]:
    """The document shards of the last artifact of this config (found, checked and noted in `used`)."""
    previous = previous_artifact(root, cfg)
    if previous is None:
        return []
    used.append(previous)
    return previous.shard_paths(DOCUMENTS_TABLE)


def _write_pointer(root: str | Path, config_fp: str, artifact: Artifact) -> None:
    data = json.dumps({"fingerprint": artifact.fingerprint, "path": artifact.path}).encode()
    DataRoot.parse(root).write_bytes(*_pointer(config_fp), data=data)  # whole or not at all


def run_collect(
    cfg: CollectConfig,
    root: str | Path,
    *,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda _msg: None,
    pages: Callable[[str, int, int], None] = lambda _source, _done, _planned: None,
    mapper: Mapper = serial_map,
) -> Artifact:
    """Collect every enabled source into one raw-documents artifact (see the module docstring).

    `pages(source, done, planned)` hears after each page a network source fetched; `mapper` runs the
    jobs of the sharded sources (here by default, as Prefect task runs in the data flow).
    """
    sources = build_sources(cfg, sleep=sleep)
    config_fp = config_fingerprint(cfg)
    # Collections of one config share the work folder: one at a time, or one deletes it under the other.
    with work_lock(root, "collect", f"work-{config_fp}"):
        work = scratch_dir(root, "collect", config_fp)
        used: list[Artifact] = []  # the last artifact, once a source asked for it
        ctx = SourceContext(
            progress=ProgressLog(work, max_age_s=cfg.resume_max_age_h * 3600),
            previous=PreviousDocuments(partial(_previous_shards, root, cfg, used)),
            log=lambda message: log(redact_url(message)),  # sources log URLs, which may carry credentials
            pages=pages,
        )
        parts, summaries = gather(sources, ctx, work, shard_bytes(cfg), mapper)
        summary = CollectSummary.of(parts, summaries, used[0] if used else None)
        if not summary.documents:
            raise _nothing_collected(sources, summaries)
        fingerprint = phase_fingerprint(
            "collect", CODE_VERSION, cfg=content_config(cfg), content=summary.content_digest
        )
        artifact = publish(root, "collect", fingerprint, partial(_write, parts=parts, summary=summary))
        _write_pointer(root, config_fp, artifact)
        shutil.rmtree(work, ignore_errors=True)
    shards = len(artifact.shards[DOCUMENTS_TABLE])
    log(f"collect: {summary.documents} documents in {shards} shards -> {artifact.path}")
    return artifact


def gather(
    sources: Sequence[Source], ctx: SourceContext, work: Path, max_bytes: int, mapper: Mapper = serial_map
) -> tuple[dict[str, list[ShardPart]], dict[str, SourceSummary]]:
    """Every source's shards (in the work folder, under its name) and summary, by the source's name.

    A sharded source's jobs go through `mapper` and a finished one is reused; any other source writes
    here, into a folder emptied first (what it resumes from is its progress log).
    """
    parts: dict[str, list[ShardPart]] = {}
    summaries: dict[str, SourceSummary] = {}
    for source in sources:
        if source.name in parts:
            raise ConfigError(f"two collect sources are named {source.name!r}: give each its own name")
        folder = work / source.name
        if isinstance(source, ShardedSource):
            jobs = source.plan(folder, max_bytes)
            ctx.log(f"{source.name}: {len(jobs)} jobs of about {max_bytes:,} bytes each")
            results = mapper(source.job, jobs)
            parts[source.name] = [r.part for r in results]
            summaries[source.name] = source.summarize(results)
            continue
        shutil.rmtree(folder, ignore_errors=True)
        with DocumentShards(folder, max_bytes) as out:
            summaries[source.name] = source.collect(ctx, out)
            parts[source.name] = [out.close()]
    return parts, summaries


def _nothing_collected(sources: Sequence[Source], summaries: dict[str, SourceSummary]) -> Exception:
    """A network source that found nothing may be down (retry); local input that gave nothing is wrong."""
    failures = _failures(summaries)
    message = f"collect found no documents in {[s.name for s in sources]}" + (
        f"; first failures: {failures[:3]}" if failures else ""
    )
    if any(s.remote for s in sources):
        return TransientSourceError(f"{message}. Check the topics and urls, or the network.")
    return InputError(f"{message}. Check collect.local.paths and text_field.")


def _failures(summaries: dict[str, SourceSummary]) -> list[dict[str, Any]]:
    return [
        {"source": name, **redact_value(asdict(failure))}  # shown in the UI, the manifest, error messages
        for name, summary in summaries.items()
        for failure in summary.failures
    ]


@dataclass(frozen=True)
class CollectSummary:
    """What summary.json holds: the sources, each one's own summary, and what was collected in all."""

    sources: dict[str, SourceSummary]
    documents: int
    per_source: dict[str, int]
    characters: int
    content_digest: str
    collected_at: str
    previous: str | None  # fingerprint of the artifact whose unchanged documents were reused

    @classmethod
    def of(
        cls, parts: dict[str, list[ShardPart]], sources: dict[str, SourceSummary], previous: Artifact | None
    ) -> CollectSummary:
        every = [part for source_parts in parts.values() for part in source_parts]
        digest = reduce(ContentDigest.merge, (p.digest for p in every), ContentDigest())
        per_source = {name: sum(p.documents for p in ps) for name, ps in parts.items()}
        return cls(
            sources=sources,
            documents=sum(p.documents for p in every),
            per_source={name: n for name, n in per_source.items() if n},
            characters=sum(p.characters for p in every),
            content_digest=digest.hexdigest(),
            collected_at=datetime.now(timezone.utc).isoformat(),
            previous=previous.fingerprint if previous is not None else None,
        )

    def as_dict(self) -> dict[str, Any]:
        """summary.json: the source names, then each source's summary under its name, then the totals."""
        totals = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "sources"}
        return {
            "sources": list(self.sources),
            **{name: summary.as_dict() for name, summary in self.sources.items()},
            **totals,
        }

    def stats(self) -> dict[str, Any]:
        """The small part of the summary that goes into the manifest (the full one is summary.json)."""
        wiki = self.sources.get(WikipediaSource.name)
        wiki = wiki if isinstance(wiki, WikipediaSummary) else WikipediaSummary()
        failures = _failures(self.sources)
        return {
            "documents": self.documents,
            "per_source": self.per_source,
            "characters": self.characters,
            "content_digest": self.content_digest,
            "skipped_missing": wiki.skipped_missing,
            "skipped_disambiguation": wiki.skipped_disambiguation,
            "reused": wiki.reused,
            "fetched": wiki.fetched,
            "failed": len(failures),
            "failures": failures[:MAX_FAILURES_IN_STATS],
        }


def _write(staging: Path, *, parts: dict[str, list[ShardPart]], summary: CollectSummary) -> dict[str, Any]:
    """The parts' shards end to end as one table (linked, not copied, where the file system allows)."""
    shards = (path for source_parts in parts.values() for part in source_parts for path in part.paths())
    for index, path in enumerate(shards):
        _link_or_copy(path, staging / shard_name(DOCUMENTS_TABLE, index))
    summary_json = json.dumps(redact_value(summary.as_dict()), indent=2, ensure_ascii=False)
    (staging / SUMMARY_FILE).write_text(summary_json)
    return summary.stats()


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: the work folder goes after publishing
        shutil.copyfile(source, target)


def summary_rows(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per source for the Prefect table artifact."""
    return [{"source": s, "documents": n} for s, n in sorted(stats["per_source"].items())]


def summary_markdown(stats: dict[str, Any]) -> str:
    lines = [
        "# Collect",
        "",
        f"{stats['documents']} documents, {stats['characters']:,} characters.",
        "",
        "| source | documents |",
        "|---|---:|",
        *[f"| {md.cell(r['source'])} | {r['documents']} |" for r in summary_rows(stats)],
        "",
        f"Wikipedia: {stats['fetched']} fetched, {stats['reused']} unchanged and reused, "
        f"{stats['skipped_disambiguation']} disambiguation and {stats['skipped_missing']} missing pages "
        "skipped.",
    ]
    if stats["failures"]:
        lines += ["", f"## Failures ({stats['failed']})", "", "| source | item | error |", "|---|---|---|"]
        lines += [
            f"| {md.cell(f['source'])} | {md.cell(f['title'])} | {md.cell(f['error'])} |"
            for f in stats["failures"]
        ]
    return "\n".join(lines) + "\n"


# --- Prefect ----------------------------------------------------------------------------------------
@task(
    name="collect",
    retries=3,
    retry_delay_seconds=[60, 300, 900],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_only_on(TransientSourceError),
    # Never cached by inputs: the same config must look at the world again. Unchanged content comes back
    # as the same fingerprint, which is what keeps the downstream phases cached.
    cache_policy=NO_CACHE,
)
def collect(cfg: CollectConfig, root: str) -> Artifact:
    logger = get_run_logger()
    bar = ProgressBar("collect-progress", "Collect: pages fetched of pages planned", warn=logger.warning)
    artifact = run_collect(cfg, root, log=logger.info, pages=PagesBar(bar), mapper=task_map)
    bar.update(1.0, f"{artifact.stats['documents']:,} documents collected")
    create_table_artifact(
        summary_rows(artifact.stats), key="collect-sources", description="Documents per source"
    )
    create_markdown_artifact(
        summary_markdown(artifact.stats), key="collect-summary", description="Collect summary"
    )
    return artifact
