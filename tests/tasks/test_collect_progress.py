"""Collect's progress bar: network sources report pages done out of pages planned, against loopback
servers; the bar sums them over the sources. The bar on a real Prefect run is tested in
test_ui_artifacts.py."""

from __future__ import annotations

from pathlib import Path

from tasks.collect import CollectConfig, run_collect
from tasks.monitoring.progress_artifact import PagesBar
from tasks.sources.base import SourceContext
from tasks.sources.wikipedia import WikipediaSource
from tests.factories import collect_all
from tests.tasks.fakes.mediawiki import serve_mediawiki
from tests.tasks.fakes.web import serve_site
from tests.tasks.test_collect_web import AGENT, web_config
from tests.tasks.test_collect_wikipedia import populate, wiki_cfg


def test_web_reports_every_url_done_failed_or_not(server, tmp_path: Path) -> None:
    with serve_site(server) as site:
        urls = [f"{site.url}/article.html", f"{site.url}/missing-page", f"{site.url}/article.html?b"]
        cfg = CollectConfig(user_agent=AGENT, web=web_config(site, urls=urls), wikipedia={"enabled": False})
        reports: list[tuple[str, int, int]] = []
        run_collect(cfg, tmp_path, pages=lambda *r: reports.append(r))
    assert reports == [("web", 1, 3), ("web", 2, 3), ("web", 3, 3)]


def test_wikipedia_reports_its_plan_then_each_page(server) -> None:
    with serve_mediawiki(server) as wiki:
        populate(wiki, n_ai=3, n_ml=2)
        reports: list[tuple[str, int, int]] = []
        source = WikipediaSource(wiki_cfg(wiki), AGENT, sleep=lambda _s: None)
        collect_all(source, SourceContext(pages=lambda *r: reports.append(r)))
    assert reports == [("wikipedia", done, 5) for done in range(6)]


class Bar:
    def __init__(self) -> None:
        self.shown: list[tuple[float, str | None]] = []

    def update(self, fraction: float, description: str | None = None) -> None:
        self.shown.append((fraction, description))


def test_the_bar_sums_the_sources_that_reported() -> None:
    bar = Bar()
    pages = PagesBar(bar)  # type: ignore[arg-type]  # any object with update() will do
    pages("web", 1, 4)
    pages("wikipedia", 0, 6)  # a second source announces its plan: the bar steps back
    pages("wikipedia", 6, 6)
    pages("web", 4, 4)
    assert [round(f, 3) for f, _ in bar.shown] == [0.25, 0.1, 0.7, 1.0]
    assert bar.shown[-1][1] == "10 of 10 pages fetched"
    empty = Bar()
    PagesBar(empty)("wikipedia", 0, 0)  # nothing to fetch: every page is current
    assert empty.shown == [(1.0, "0 of 0 pages fetched")]
