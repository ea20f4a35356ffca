"""The model as an MLflow pyfunc: text prompts in, generated text out.

The logged model carries one artifact, the model directory (`config.json`, `model.safetensors`,
`tokenizer.model`), and `load_context` rebuilds everything from that directory alone, exactly as the CLI
does. The model is logged "from code" (`write_model_code`: a three-line script that names the class),
so a registered model holds no pickle at all, in line with the safetensors-only model directory.
Sampling knobs arrive as MLflow `params` (declared with their defaults in the signature), so
`mlflow models serve` accepts `{"inputs": ["The future of AI is"], "params": {"temperature": 0.0}}`.

This is the only module of the package that imports mlflow, and the package `__init__` never imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

from tinyllama_model.generate import generate_text
from tinyllama_model.model import TinyLlama
from tinyllama_model.tokenizer import Tokenizer

MODEL_DIR_ARTIFACT = "model_dir"  # the key of the model directory in the pyfunc's `artifacts`
PROMPT_COLUMN = "prompt"

# name -> (MLflow type, default). Serving defaults; `register` overrides them from its config section.
SAMPLING_PARAMS: dict[str, tuple[DataType, Any]] = {
    "max_new_tokens": (DataType.long, 64),
    "temperature": (DataType.double, 0.8),  # 0 = greedy
    "top_k": (DataType.long, 50),  # 0 = off
    "top_p": (DataType.double, 1.0),  # 1 = off
    "repetition_penalty": (DataType.double, 1.0),  # 1 = off
    "seed": (DataType.long, -1),  # -1 = a fresh random draw on every call
    "model_only": (DataType.boolean, False),  # True: the network alone (no experts, no adaptation)
}


# What MLflow runs to build the model at load time ("models from code"), instead of unpickling an object.
MODEL_CODE = """\
import mlflow

from tinyllama_model.pyfunc import TinyLlamaPyfunc

mlflow.models.set_model(TinyLlamaPyfunc())
"""


def write_model_code(directory: str | Path) -> Path:
    """Write the models-from-code script to `directory` and return its path (pass it as `python_model`)."""
    path = Path(directory) / "tinyllama_pyfunc.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(MODEL_CODE)
    return path


def signature(**defaults: Any) -> ModelSignature:
    """Text in, text out, with every sampling knob declared as a param (defaults overridable here)."""
    unknown = set(defaults) - set(SAMPLING_PARAMS)
    if unknown:
        raise ValueError(f"unknown sampling params {sorted(unknown)}; known: {sorted(SAMPLING_PARAMS)}")
    params = [ParamSpec(name, dtype, defaults.get(name, d)) for name, (dtype, d) in SAMPLING_PARAMS.items()]
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string)]),  # unnamed: a plain list of prompts is valid input
        outputs=Schema([ColSpec(DataType.string)]),
        params=ParamSchema(params),
    )


def prompts_from_input(model_input: Any) -> list[str]:
    """Accept what callers naturally send: a str, a list of str, a DataFrame/dict with a `prompt` column.

    A DataFrame or dict without a `prompt` key uses its first column, so `{"inputs": [...]}` over REST
    and `predict(["..."])` in Python work the same.
    """
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, Mapping):
        if not model_input:
            raise ValueError("empty input: send {'prompt': ['some text', ...]} or a list of prompts")
        value = model_input.get(PROMPT_COLUMN, next(iter(model_input.values())))
        return prompts_from_input(value)
    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] == 0:
            raise ValueError(f"the input DataFrame has no columns; give it a '{PROMPT_COLUMN}' column")
        column = model_input[PROMPT_COLUMN] if PROMPT_COLUMN in model_input else model_input.iloc[:, 0]
        return prompts_from_input(column.tolist())
    if isinstance(model_input, (pd.Series, np.ndarray)):
        return prompts_from_input(model_input.tolist())
    if isinstance(model_input, (list, tuple)):
        prompts = [p[0] if isinstance(p, (list, tuple)) and len(p) == 1 else p for p in model_input]
        bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
        if bad:
            raise ValueError(f"every prompt must be a string, got {sorted(set(bad))}")
        return list(prompts)
    raise ValueError(
        f"cannot read prompts from {type(model_input).__name__}: send a list of strings or a DataFrame with "
        f"a '{PROMPT_COLUMN}' column"
    )


def sampling_kwargs(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """MLflow params (sentinels for "off") -> keyword arguments of `generate_text`."""
    merged = {name: default for name, (_, default) in SAMPLING_PARAMS.items()}
    merged.update({k: v for k, v in (params or {}).items() if v is not None})
    unknown = set(merged) - set(SAMPLING_PARAMS)
    if unknown:
        raise ValueError(f"unknown params {sorted(unknown)}; known: {sorted(SAMPLING_PARAMS)}")
    if int(merged["max_new_tokens"]) < 1:
        raise ValueError(f"max_new_tokens={merged['max_new_tokens']} must be at least 1")
    return {
        "max_new_tokens": int(merged["max_new_tokens"]),
        "temperature": float(merged["temperature"]),
        "top_k": int(merged["top_k"]) if int(merged["top_k"]) > 0 else None,
        "top_p": float(merged["top_p"]) if float(merged["top_p"]) < 1.0 else None,
        "repetition_penalty": float(merged["repetition_penalty"]),
        "seed": int(merged["seed"]) if int(merged["seed"]) >= 0 else None,
        "model_only": bool(merged["model_only"]),
    }


class TinyLlamaPyfunc(mlflow.pyfunc.PythonModel):
    """Rebuilds the model from its directory and generates continuations for a batch of prompts."""

    def __init__(self) -> None:
        self.model: TinyLlama | None = None
        self.tokenizer: Tokenizer | None = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.load_dir(Path(context.artifacts[MODEL_DIR_ARTIFACT]))

    def load_dir(self, model_dir: Path) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = TinyLlama.from_pretrained(model_dir, map_location=device).eval()
        self.tokenizer = Tokenizer(model_dir)
        if self.tokenizer.vocab_size > self.model.config.vocab_size:
            raise ValueError(
                f"{model_dir}: tokenizer has {self.tokenizer.vocab_size} ids but the model only "
                f"{self.model.config.vocab_size}; the directory mixes files from different trainings"
            )

    # MLflow enforces the signature before calling this, so `model_input` is a one-column DataFrame. The
    # DataFrame hint says so without asking MLflow for a second, type-hint-derived schema (list[str] would).
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        if self.model is None or self.tokenizer is None:
            raise RuntimeError(
                "the model is not loaded: use mlflow.pyfunc.load_model (it calls load_context)"
            )
        prompts = prompts_from_input(model_input)
        if not prompts:
            return []
        try:
            with torch.inference_mode():
                return generate_text(self.model, self.tokenizer, prompts, **sampling_kwargs(params))
        except ValueError as err:  # the request's fault (a prompt too long, a bad param): a 400, not a 500
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from err
