"""The "operational" mark on config fields, read by every fingerprint and by checkpoint identity.

An operational field changes how a run is paced, watched or placed (timeouts, retries, log intervals,
device, threads), never what it computes. Fingerprints and a checkpoint's identity leave such fields out,
so tuning one keeps every cached artifact and every resumable checkpoint valid. The mark is said once, on
the field itself: `field(metadata=operational(...))` on a dataclass, `Field(json_schema_extra=
operational())` on a pydantic model (read here by duck typing: this layer does not import pydantic).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

OPERATIONAL = "operational"


def operational(**metadata: Any) -> dict[str, Any]:
    """Field metadata that marks a field operational (extra entries, e.g. a `doc`, are kept)."""
    return {**metadata, OPERATIONAL: True}


def _marked(extra: Any) -> bool:
    return isinstance(extra, Mapping) and bool(extra.get(OPERATIONAL))


def operational_fields(config: Any) -> frozenset[str]:
    """Names of the operational fields of a dataclass or pydantic model (class or instance)."""
    cls = config if isinstance(config, type) else type(config)
    if dataclasses.is_dataclass(cls):
        return frozenset(f.name for f in dataclasses.fields(cls) if _marked(f.metadata))
    model_fields = getattr(cls, "model_fields", None)
    if model_fields is not None:
        return frozenset(name for name, info in model_fields.items() if _marked(info.json_schema_extra))
    raise TypeError(f"{cls.__name__} is neither a dataclass nor a pydantic model")


def result_fields(config: Any) -> dict[str, Any]:
    """The config as a dict of the fields that decide the result, nested configs included."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        names = [f.name for f in dataclasses.fields(config)]
    elif hasattr(type(config), "model_fields"):
        names = list(type(config).model_fields)
    else:
        return config
    skip = operational_fields(config)
    return {name: result_fields(getattr(config, name)) for name in names if name not in skip}
