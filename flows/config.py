"""`PipelineConfig`: the one config object of a build, and how presets and overrides load into it.

It is the `build` flow's parameter, so the Prefect UI renders it as a form and
`prefect deployment run ... --param` can override any field. Each phase receives only its own section;
the sections are defined next to the code that uses them. A preset is a YAML file holding only the
fields it changes; `--set section.field=value` overrides are applied on top, values parsed as YAML.
A preset may name a `size` from `tinyllama_model.training.sizing` (e.g. `cpu_10min`): its model, train and
vocabulary settings are the base that the preset's own `model`/`train` fields then adjust.
"""

from __future__ import annotations

import dataclasses
import typing
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.collect import CollectConfig
from tasks.evaluate import EvaluateConfig
from tasks.preprocess import PreprocessConfig
from tasks.register import RegisterConfig
from tasks.storage.data_root import DataRoot
from tasks.tokenizer import TokenizerConfig
from tinyllama_model.config_fields import operational
from tinyllama_model.errors import ConfigError
from tinyllama_model.mixture.config import check_moved
from tinyllama_model.model import ModelConfig
from tinyllama_model.training.sizing import PRESETS as SIZES
from tinyllama_model.training.train_config import TrainConfig

PRESETS_DIR = Path(__file__).parent / "presets"


class DaskConfig(BaseModel):
    """Where the data phases' shards run: on threads of the flow's process, or on a Dask cluster.

    Each phase's driver stays in the flow's process; its per-shard jobs (collect's files, preprocess's
    passes, encode) are Prefect task runs that prefect-dask places on the cluster's workers. A worker
    holds one shard's rows per thread at a time, so `memory_limit` is sized from the shard size
    (README, "Scaling out").
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="Run the data phases' shards on Dask (install the `dask` extra: prefect-dask).",
        json_schema_extra=operational(),
    )
    address: str | None = Field(
        None,
        description="Scheduler address of an existing cluster, e.g. tcp://10.0.0.5:8786; None starts one.",
        json_schema_extra=operational(),
    )
    n_workers: int = Field(
        2,
        ge=1,
        description="Workers of the local cluster started when no address.",
        json_schema_extra=operational(),
    )
    threads_per_worker: int = Field(
        1,
        ge=1,
        description="Threads per worker of the local cluster (shards a worker runs at once).",
        json_schema_extra=operational(),
    )
    memory_limit: str = Field(
        "4GiB",
        description="Memory per worker of the local cluster (Dask syntax: '4GiB', or 'auto' = RAM x threads "
        "/ cores); the nanny restarts a worker that passes 95% of it.",
        json_schema_extra=operational(),
    )


# The design names a section `register`, which shadows ABCMeta.register on the class (never used here);
# instances read the field as usual.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class PipelineConfig(BaseModel):
    """Everything one build needs; defaults are the full Wikipedia AI build."""

    model_config = ConfigDict(extra="forbid")

    data_root: str = Field(
        ".tinyllama/data",
        description="Folder, or object-store URL (s3://bucket/prefix, gs://bucket/prefix; credentials and "
        "endpoint from the environment), every phase writes under (<root>/<phase>/<fingerprint>/).",
    )
    upload_grace_hours: float = Field(
        24.0,
        gt=0,
        description="`tinyllama sweep` removes an object-store upload no manifest names only once it and the "
        "manifest that replaced it are this old, so a reader or writer still at work is never cut short.",
        json_schema_extra=operational(),
    )
    train_deployment: str | None = Field(
        None,
        description="Deployment that trains on the GPU pool, e.g. 'tinyllama-train/gpu'; None: in-process.",
    )
    dask: DaskConfig = Field(default_factory=DaskConfig)
    collect: CollectConfig = Field(default_factory=CollectConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    register: RegisterConfig = Field(default_factory=RegisterConfig)

    @field_validator("data_root")
    @classmethod
    def _usable_root(cls, value: str) -> str:
        DataRoot.parse(value)  # an unknown scheme or a missing backend fails now, naming what to install
        return value


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def read_preset(preset: str) -> dict[str, Any]:
    """A preset by name (`demo`) or by path (`my.yaml`)."""
    path = Path(preset)
    if not path.is_file():
        path = PRESETS_DIR / f"{preset}.yaml"
    if not path.is_file():
        known = ", ".join(preset_names())
        raise ConfigError(f"no preset {preset!r}: give a YAML file path or one of {known}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"preset {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"preset {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def _field_names(model: Any) -> list[str] | None:
    """The settable fields of a config node (pydantic model or dataclass), or None for a leaf."""
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    if dataclasses.is_dataclass(model):
        return [f.name for f in dataclasses.fields(model)]
    return None


def _field_type(node: Any, name: str) -> Any:
    if isinstance(node, type) and issubclass(node, BaseModel):
        return node.model_fields[name].annotation
    return typing.get_type_hints(node)[name]  # a dataclass under postponed annotations holds strings


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `a.b.c=value` override to a nested dict, checking the path exists in PipelineConfig."""
    if "=" not in override:
        raise ConfigError(
            f"override {override!r} must look like section.field=value, e.g. train.max_steps=10"
        )
    dotted, raw = override.split("=", 1)
    keys = dotted.strip().split(".")
    node: Any = PipelineConfig
    for depth, key in enumerate(keys):
        names = _field_names(node)
        where = ".".join(keys[:depth]) or "the top level"
        if names is None:
            raise ConfigError(
                f"unknown setting {dotted!r}: {where} is a single value, not a section; set it with "
                f"--set {where}=VALUE"
            )
        if key not in names:
            if keys[:depth] == ["train"]:
                check_moved({key: None})  # a mixture setting where it lived before: name the new key
            known = ", ".join(names)
            raise ConfigError(f"unknown setting {dotted!r}: {where} has no field {key!r} (fields: {known})")
        if depth < len(keys) - 1:
            node = _field_type(node, key)
    target = data
    for key in keys[:-1]:
        target = target.setdefault(key, {})
        if not isinstance(target, dict):
            raise ConfigError(f"cannot set {dotted!r}: {key} is a value, not a section")
    target[keys[-1]] = yaml.safe_load(raw)


def _apply_size(data: dict[str, Any]) -> dict[str, Any]:
    """Expand `size: NAME` into model/train/tokenizer defaults that the preset's own fields refine."""
    name = data.pop("size", None)
    if name is None:
        return data
    preset_train = data.get("train")
    if name not in SIZES:
        raise ConfigError(f"unknown size {name!r}: choose one of {', '.join(sorted(SIZES))}")
    model, train, vocab = SIZES[name]()
    base = {
        "model": dataclasses.asdict(model),
        "train": dataclasses.asdict(train),
        "tokenizer": {"vocab_size": vocab},
    }
    for section, values in base.items():
        data[section] = {**values, **(data.get(section) or {})}
    own_mixture = (preset_train or {}).get("mixture")  # refines the size's mixture key by key
    if isinstance(own_mixture, dict):
        data["train"]["mixture"] = {**base["train"]["mixture"], **own_mixture}
    return data


def load_config(preset: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Defaults, then the preset, then each override; one clear error if the result is invalid."""
    data = read_preset(preset) if preset else {}
    if isinstance(data.get("train"), dict):
        check_moved(data["train"])  # a preset written before train.mixture: name the new key
    data = _apply_size(data)
    for override in overrides:
        apply_override(data, override)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        origin = f"preset {preset!r}" if preset else "the defaults"
        raise ConfigError(f"invalid configuration ({origin} + overrides):\n{err}") from err
