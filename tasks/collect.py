"""Phase 1, collect: the configured sources -> `documents.parquet` (one row per raw document) + summary.

Sources are switched on in the config: `wikipedia.enabled`, `web.urls` (non-empty), `local.paths`
(non-empty) and `builtin` (the offline corpus). The default is the full Wikipedia build; the demo
preset turns Wikipedia off and `builtin` on.

Collect's input is the outside world, so its artifact fingerprint hashes WHAT was collected (doc ids,
revisions, text hashes) plus the config: a scheduled re-run that finds nothing changed lands on the
same fingerprint and everything downstream stays cached. A pointer `<root>/collect/latest-<config>.json`
names the last artifact of this config, so the next run re-downloads only pages whose revision
changed. Work in progress lives in `<root>/collect/.work-<config>/` until the artifact is published:
a retried or restarted collection resumes there instead of starting over.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.artifacts import Artifact, load_artifact, phase_fingerprint, publish, scratch_dir
from tasks.retries import retry_only_on
from tasks.sources.builtin import builtin_documents
from tasks.sources.document import (
    DOCUMENTS_FILE,
    Document,
    content_digest,
    read_documents,
    write_documents,
)
from tasks.sources.errors import InputError, TransientSourceError
from tasks.sources.local import LocalConfig, read_local
from tasks.sources.progress import ProgressLog
from tasks.sources.useragent import require_user_agent
from tasks.sources.web import WebConfig, WebFetcher, collect_web
from tasks.sources.wikipedia import SOURCE as WIKIPEDIA
from tasks.sources.wikipedia import MediaWikiClient, WikipediaConfig, collect_wikipedia
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


def enabled_sources(cfg: CollectConfig) -> list[str]:
    return [
        name
        for name, on in (
            ("builtin", cfg.builtin),
            ("local", bool(cfg.local.paths)),
            ("web", bool(cfg.web.urls)),
            ("wikipedia", cfg.wikipedia.enabled),
        )
        if on
    ]


def validate(cfg: CollectConfig) -> None:
    """Fail before any work when the config cannot produce documents."""
    sources = enabled_sources(cfg)
    if not sources:
        raise ConfigError(
            "no collect source is switched on: set collect.wikipedia.enabled=true, collect.builtin=true, "
            "or give collect.web.urls / collect.local.paths"
        )
    if "wikipedia" in sources:
        require_user_agent(cfg.user_agent, "collect.wikipedia")
    if "web" in sources:
        require_user_agent(cfg.user_agent, "collect.web")


def _pointer(root: Path, config_fp: str) -> Path:
    return root / "collect" / f"latest-{config_fp}.json"


def previous_artifact(root: Path, cfg: CollectConfig) -> Artifact | None:
    """The last published collect artifact of this config, if it is still complete on disk."""
    pointer = _pointer(root, config_fingerprint(cfg))
    if not pointer.is_file():
        return None
    fingerprint = json.loads(pointer.read_text()).get("fingerprint", "")
    return load_artifact(root, "collect", fingerprint)


def _write_pointer(root: Path, config_fp: str, artifact: Artifact) -> None:
    pointer = _pointer(root, config_fp)
    tmp = pointer.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"fingerprint": artifact.fingerprint, "path": artifact.path}))
    os.replace(tmp, pointer)


def run_collect(
    cfg: CollectConfig,
    root: Path,
    *,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda _msg: None,
) -> Artifact:
    """Collect every enabled source into one raw-documents artifact (see the module docstring)."""
    root = Path(root)
    validate(cfg)
    config_fp = config_fingerprint(cfg)
    work = scratch_dir(root, "collect", config_fp)
    progress = ProgressLog(work, max_age_s=cfg.resume_max_age_h * 3600)
    previous = previous_artifact(root, cfg)

    docs: list[Document] = []
    summary: dict[str, Any] = {"sources": enabled_sources(cfg)}
    if cfg.builtin:
        builtin = builtin_documents()
        docs += builtin
        summary["builtin"] = {"documents": len(builtin)}
    if cfg.local.paths:
        local = read_local(cfg.local)
        docs += local.documents
        summary["local"] = local.summary
    if cfg.web.urls:
        fetcher = WebFetcher(cfg.web, require_user_agent(cfg.user_agent, "collect.web"), sleep=sleep)
        try:
            web = collect_web(cfg.web, fetcher, progress, log)
        finally:
            fetcher.close()
        docs += web.documents
        summary["web"] = web.summary
    if cfg.wikipedia.enabled:
        known = {}
        if previous is not None:
            known = {
                d.doc_id: d for d in read_documents(previous.file(DOCUMENTS_FILE)) if d.source == WIKIPEDIA
            }
        client = MediaWikiClient(
            cfg.wikipedia, require_user_agent(cfg.user_agent, "collect.wikipedia"), sleep=sleep
        )
        try:
            wiki = collect_wikipedia(cfg.wikipedia, client, progress, known, log)
        finally:
            client.close()
        docs += wiki.documents
        summary["wikipedia"] = wiki.summary

    docs = _unique(docs)
    if not docs:
        failures = _failures(summary)
        message = f"collect found no documents in {summary['sources']}" + (
            f"; first failures: {failures[:3]}" if failures else ""
        )
        if {"web", "wikipedia"} & set(summary["sources"]):
            raise TransientSourceError(f"{message}. Check the topics and urls, or the network.")
        raise InputError(f"{message}. Check collect.local.paths and text_field.")
    digest = content_digest(docs)
    fingerprint = phase_fingerprint("collect", CODE_VERSION, cfg=content_config(cfg), content=digest)
    summary.update(
        documents=len(docs),
        per_source=dict(Counter(d.source for d in docs)),
        characters=sum(len(d.text) for d in docs),
        content_digest=digest,
        collected_at=datetime.now(timezone.utc).isoformat(),
        previous=previous.fingerprint if previous is not None else None,
    )

    def build(staging: Path) -> dict[str, Any]:
        write_documents(staging / DOCUMENTS_FILE, docs)
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False))
        return collect_stats(summary)

    artifact = publish(root, "collect", fingerprint, build)
    _write_pointer(root, config_fp, artifact)
    shutil.rmtree(work, ignore_errors=True)
    log(f"collect: {len(docs)} documents -> {artifact.path}")
    return artifact


def _unique(docs: list[Document]) -> list[Document]:
    """One row per doc_id (the same URL listed twice, the same file matched by two globs)."""
    first: dict[str, Document] = {}
    for doc in docs:
        first.setdefault(doc.doc_id, doc)
    return list(first.values())


def _failures(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"source": source, **failure}
        for source in ("local", "web", "wikipedia")
        for failure in summary.get(source, {}).get("failures", [])
    ]


def collect_stats(summary: dict[str, Any]) -> dict[str, Any]:
    """The small part of the summary that goes into the manifest (the full one is summary.json)."""
    wiki = summary.get("wikipedia", {})
    failures = _failures(summary)
    return {
        "documents": summary["documents"],
        "per_source": summary["per_source"],
        "characters": summary["characters"],
        "content_digest": summary["content_digest"],
        "skipped_missing": wiki.get("skipped_missing", 0),
        "skipped_disambiguation": wiki.get("skipped_disambiguation", 0),
        "reused": wiki.get("reused", 0),
        "fetched": wiki.get("fetched", 0),
        "failed": len(failures),
        "failures": failures[:MAX_FAILURES_IN_STATS],
    }


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
    artifact = run_collect(cfg, Path(root), log=logger.info)
    create_table_artifact(
        summary_rows(artifact.stats), key="collect-sources", description="Documents per source"
    )
    create_markdown_artifact(
        summary_markdown(artifact.stats), key="collect-summary", description="Collect summary"
    )
    return artifact
