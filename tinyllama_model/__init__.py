"""tinyllama_model: the model and everything plain PyTorch / plain Python around it.

This package never imports prefect or mlflow: tasks and flows sit above it and call into it. The model's
names load on first use, so the data phases (and their Dask workers), which need only the tokenizer and
file helpers, do not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tinyllama_model.model import ModelConfig, TinyLlama

__all__ = ["ModelConfig", "TinyLlama"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tinyllama_model import model

        return getattr(model, name)
    raise AttributeError(f"module 'tinyllama_model' has no attribute {name!r}")
