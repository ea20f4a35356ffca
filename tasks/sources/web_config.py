"""The web source's settings: which pages, which internal hosts, and how patient and how wary to be."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from tasks.sources.addresses import parse_allow_entry
from tasks.sources.retry import RetryConfig
from tinyllama_model.config_fields import operational

HTML_TYPES = ("text/html", "application/xhtml+xml")


class WebConfig(BaseModel):
    """Individual web pages (no crawling beyond redirects)."""

    urls: list[str] = Field(
        default_factory=list, description="Pages to fetch; empty turns the web source off."
    )
    topic: str | None = Field(None, description="Topic recorded on every web document.")
    allow_hosts: list[str] = Field(
        default_factory=list,
        description="Internal hosts the fetcher may reach although their address is not global (loopback, "
        "private, link-local...): exact 'host' or 'host:port' entries, e.g. 'wiki.internal:8080'; an entry "
        "without a port means the scheme's default port. Every other hop must resolve to global addresses.",
    )
    timeout_s: float = Field(
        20.0,
        gt=0,
        description="Timeout of one name lookup, connect or HTTP read, in seconds.",
        json_schema_extra=operational(),
    )
    request_deadline_s: float = Field(
        60.0,
        gt=0,
        description="Longest time one HTTP request (connect, headers and the whole body) may take, in "
        "seconds; a page still arriving then is refused, not retried.",
        json_schema_extra=operational(),
    )
    url_budget_s: float = Field(
        180.0,
        gt=0,
        description="Longest time one URL may take in all, in seconds: its name lookups, robots.txt, "
        "redirects, every attempt and the waits between them; past it the page is recorded as failed.",
        json_schema_extra=operational(),
    )
    max_redirects: int = Field(5, ge=0, le=20, description="Longest redirect chain followed.")
    max_bytes: int = Field(
        5_000_000, ge=1024, description="Largest (decoded) response body read; bigger pages are refused."
    )
    robots_max_bytes: int = Field(
        500_000,
        ge=1024,
        description="Most bytes of a robots.txt read (decoded); rules past them are ignored (RFC 9309).",
        json_schema_extra=operational(),
    )
    max_html_depth: int = Field(
        2000, ge=10, description="Deepest HTML nesting parsed; deeper pages are refused as HTML bombs."
    )
    per_host_delay_s: float = Field(
        1.0,
        ge=0,
        description="Least time between two requests to one host (robots.txt may ask for more).",
        json_schema_extra=operational(),
    )
    max_crawl_delay_s: float = Field(
        30.0,
        ge=0,
        description="Longest Crawl-delay of a robots.txt honoured, in seconds; a site asking for more is "
        "waited this long between requests.",
        json_schema_extra=operational(),
    )
    content_types: list[str] = Field(
        default_factory=lambda: [*HTML_TYPES, "text/plain"], description="Media types read; others refused."
    )
    retry: RetryConfig = Field(
        default_factory=RetryConfig,
        description="Backoff for transient HTTP faults.",
        json_schema_extra=operational(),
    )

    @field_validator("allow_hosts")
    @classmethod
    def _host_port_entries(cls, entries: list[str]) -> list[str]:
        for entry in entries:
            parse_allow_entry(entry)
        return entries
