"""The `tinyllama-train` flow: the train phase on its own, for the `gpu` work pool.

`build` hands training here with `run_deployment` when `train_deployment` is set. Both flows share
artifacts through the data root, so this flow receives only the token and tokenizer artifacts (paths +
fingerprints) and publishes the model under `<data_root>/train/<fingerprint>/`, where `build` finds it.
"""

from __future__ import annotations

from prefect import flow

from tasks.storage.artifacts import Artifact
from tasks.storage.data_root import DataRoot
from tasks.tracking.mlflow_run import RunRef
from tasks.train import train as train_model
from tinyllama_model.model import ModelConfig
from tinyllama_model.training.train_config import TrainConfig


@flow(name="tinyllama-train", log_prints=True)
def train(
    model: ModelConfig | None = None,
    train: TrainConfig | None = None,
    tokens: Artifact | None = None,
    tokenizer: Artifact | None = None,
    data_root: str | None = None,
    mlflow_run: RunRef | None = None,
) -> Artifact:
    """Train on the artifacts of an earlier `tinyllama-build` run (started by it, or by hand)."""
    if tokens is None or tokenizer is None or data_root is None:
        raise ValueError(
            "tinyllama-train needs the `tokens` and `tokenizer` artifacts and the `data_root` they live in; "
            "run it through tinyllama-build with train_deployment='tinyllama-train/gpu'"
        )
    model, train = model or ModelConfig(), train or TrainConfig()
    return train_model(model, train, tokens, tokenizer, DataRoot.parse(data_root).url, mlflow_run)
