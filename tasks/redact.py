"""Credentials out of what the pipeline logs: URL userinfo and secret-looking query parameters.

A tracking URI such as `https://user:pass@mlflow.example.org` or a page such as `...?access_token=...`
must reach the code that connects with it, but never the places people read: MLflow params,
`registration.json`, Prefect markdown, collect summaries and failure lists, log lines. Those places
pass what they write through `redact_url` (one string) or `redact_value` (a nested JSON-like value)
at the point where it is written; the configuration itself keeps the real values.

Redaction works on free text, not just on a bare URL, because URLs reach logs inside messages
("disallowed by robots.txt: https://..."), Markdown links and JSON lists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"

# scheme://userinfo@ : the userinfo ends at the first "@" before the path, query or fragment starts
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#@\s]+)@")
# ?name=value or &name=value; the value ends where a URL, a quoted string or a Markdown cell would
_QUERY_PARAM = re.compile(r"(?P<head>[?&;](?P<name>[^=&#?;\s]+)=)(?P<value>[^&#;\s'\"<>`|)\]]*)")
# parameter names that carry secrets: OAuth and API tokens, keys, signatures (S3 presigned URLs), sessions
_SECRET_NAME = re.compile(
    r"token(?!izer)|secret|passw|pwd|credential|signature|auth(?!or)|session|jwt|cookie|apikey|accesskey"
    r"|(^|[_\-.])(api[_\-]?|access[_\-]?|private[_\-]?)?key($|[_\-.])|^sig$|^code$",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """Whether a query parameter called `name` looks like it carries a credential."""
    return bool(_SECRET_NAME.search(name))


def redact_url(text: str) -> str:
    """`text` with every URL's userinfo and every secret-looking query value replaced by ***.

    `https://alice:pw@host/x?token=abc&page=2` becomes `https://***@host/x?token=***&page=2`; text
    without URLs comes back unchanged.
    """
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _QUERY_PARAM.sub(_mask_param, text)


def _mask_param(match: re.Match[str]) -> str:
    if match["value"] and is_secret_name(match["name"]):
        return f"{match['head']}{MASK}"
    return match[0]


def redact_value(value: Any) -> Any:
    """`redact_url` applied to every string in a nested structure of mappings, lists and tuples."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, Mapping):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(item) for item in value)
    return value
