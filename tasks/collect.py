"""Phase 1, collect: the configured sources -> `documents.parquet` (one row per raw document) + summary.

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
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.monitoring.progress_artifact import PagesBar, ProgressBar
from tasks.redact import redact_url, redact_value
from tasks.retries import retry_only_on
from tasks.shard_map import Mapper, serial_map, task_map
from tasks.sources.base import PreviousDocuments, Source, SourceContext, SourceSummary
from tasks.sources.builtin import BuiltinSource
from tasks.sources.document import DOCUMENTS_FILE, Document, content_digest, write_documents
from tasks.sources.errors import InputError, TransientSourceError
from tasks.sources.local import LocalConfig, LocalSource
from tasks.sources.progress import ProgressLog
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
from tinyllama_model.config_fields import operational, result_fields
from tinyllama_model.errors import ConfigError

CODE_VERSION = "1"
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


def build_sources(cfg: CollectConfig, *, sleep: Callable[[float], None] = time.sleep) -> list[Source]:
    """The switched-on sources, in the order their documents are listed (the first of a doc_id wins).

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
    mapper: Mapper = serial_map,  # encode branch: accepted, unused until the collect branch shards collect
) -> Artifact:
    """Collect every enabled source into one raw-documents artifact (see the module docstring).

    `pages(source, done, planned)` hears after each page a network source fetched.
    """
    sources = build_sources(cfg, sleep=sleep)
    config_fp = config_fingerprint(cfg)
    # Collections of one config share the work folder: one at a time, or one deletes it under the other.
    with work_lock(root, "collect", f"work-{config_fp}"):
        work = scratch_dir(root, "collect", config_fp)
        previous = previous_artifact(root, cfg)
        ctx = SourceContext(
            progress=ProgressLog(work, max_age_s=cfg.resume_max_age_h * 3600),
            previous=PreviousDocuments(previous.file(DOCUMENTS_FILE) if previous is not None else None),
            log=lambda message: log(redact_url(message)),  # sources log URLs, which may carry credentials
            pages=pages,
        )
        docs, summaries = gather(sources, ctx)
        if not docs:
            raise _nothing_collected(sources, summaries)
        summary = CollectSummary.of(docs, summaries, previous)
        fingerprint = phase_fingerprint(
            "collect", CODE_VERSION, cfg=content_config(cfg), content=summary.content_digest
        )
        artifact = publish(root, "collect", fingerprint, partial(_write, docs=docs, summary=summary))
        _write_pointer(root, config_fp, artifact)
        shutil.rmtree(work, ignore_errors=True)
    log(f"collect: {len(docs)} documents -> {artifact.path}")
    return artifact


def gather(sources: Sequence[Source], ctx: SourceContext) -> tuple[list[Document], dict[str, SourceSummary]]:
    """Every source's documents, one row per doc_id (the same URL listed twice, the same file matched
    by two globs: the first wins), and each source's summary by its name."""
    first: dict[str, Document] = {}
    summaries: dict[str, SourceSummary] = {}
    for source in sources:
        docs, summaries[source.name] = source.collect(ctx)
        for doc in docs:
            first.setdefault(doc.doc_id, doc)
    return list(first.values()), summaries


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
        cls, docs: list[Document], sources: dict[str, SourceSummary], previous: Artifact | None
    ) -> CollectSummary:
        return cls(
            sources=sources,
            documents=len(docs),
            per_source=dict(Counter(d.source for d in docs)),
            characters=sum(len(d.text) for d in docs),
            content_digest=content_digest(docs),
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


def _write(staging: Path, *, docs: list[Document], summary: CollectSummary) -> dict[str, Any]:
    write_documents(staging / DOCUMENTS_FILE, docs)
    summary_json = json.dumps(redact_value(summary.as_dict()), indent=2, ensure_ascii=False)
    (staging / SUMMARY_FILE).write_text(summary_json)
    return summary.stats()


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
        *[f"| {r['source']} | {r['documents']} |" for r in summary_rows(stats)],
        "",
        f"Wikipedia: {stats['fetched']} fetched, {stats['reused']} unchanged and reused, "
        f"{stats['skipped_disambiguation']} disambiguation and {stats['skipped_missing']} missing pages "
        "skipped.",
    ]
    if stats["failures"]:
        lines += ["", f"## Failures ({stats['failed']})", "", "| source | item | error |", "|---|---|---|"]
        lines += [f"| {f['source']} | {f['title']} | {f['error']} |" for f in stats["failures"]]
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
