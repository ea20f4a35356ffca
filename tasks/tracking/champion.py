"""The champion rule: the alias `champion` moves only to a version with a strictly better metric.

The metric is validation bits per byte by default (lower is better); bits per byte do not depend on the
vocabulary, so models with different tokenizers compete fairly. A version's metric is read from its
tags (the register phase puts the evaluation figures there), else from the run that logged it.

This module only reads versions and moves the alias; registering them is `tasks.tracking.model_versions`'s
job.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException


class ChampionSettings(Protocol):
    """What this module reads of the register section (`tasks.register.RegisterConfig`)."""

    model_name: str
    champion_alias: str
    champion_metric: str


def promote_if_better(
    client: MlflowClient, cfg: ChampionSettings, version: int, value: float | None
) -> dict[str, Any]:
    """Point the champion alias at `version` when its metric is strictly lower than the champion's.

    A version without the metric never becomes champion; a champion without it (set by hand) loses to
    any measured version. Ties keep the current champion.
    """
    champion = _version_by_alias(client, cfg.model_name, cfg.champion_alias)
    previous = int(champion.version) if champion is not None else None
    previous_value = _version_metric(client, champion, cfg.champion_metric) if champion is not None else None
    measured = value is not None and math.isfinite(value)
    moved = measured and previous != version and (previous_value is None or value < previous_value)
    if moved:
        client.set_registered_model_alias(cfg.model_name, cfg.champion_alias, str(version))
    return {
        "champion_moved": moved,
        "champion_version": version if moved else previous,
        "previous_champion": previous,
        "previous_champion_value": previous_value,
    }


def _version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _version_metric(client: MlflowClient, mv: ModelVersion, key: str) -> float | None:
    """The metric from the version's tags, else from the run that logged it."""
    raw = mv.tags.get(key)
    if raw is None and mv.run_id:
        raw = client.get_run(mv.run_id).data.metrics.get(key)
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None
