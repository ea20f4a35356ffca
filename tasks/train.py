"""The train phase: token Parquet + tokenizer -> a model directory, its metrics and a summary.

The model's vocabulary size always comes from the tokenizer (`model.vocab_size` is overridden, with a
log line when it differed), so a tokenizer config change can never produce a model that cannot embed
its ids. Training state lives in `scratch_dir(root, "train", fingerprint)`: packed `train.bin` /
`val.bin`, `run.json` and the trainer's checkpoints, so a retried task resumes from its last checkpoint
instead of starting over; on an object-store data root the checkpoints (with the best model so far and the
metrics log) are mirrored to `<root>/train/.work-<fingerprint>/` as they are saved and fetched back before
a resume, so a retry on another worker resumes too (`tasks.storage.store_sync.WorkMirror`). The published
artifact
holds:

    model/          config.json, model.safetensors, tokenizer.model: the checkpoint with the lowest
                    validation loss. Validation always runs at the end, so with a schedule that decays to
                    its floor this is usually the final model; if a long multi-epoch run starts to
                    overfit, the earlier, better one is kept instead.
    metrics.jsonl   per step: train_loss, lr, tokens_per_s, mfu; per evaluation: val_loss, val_ppl, val_bpb
    result.json     the summary (also the artifact's stats)

With `train.nproc_per_node > 1` the trainer runs under `torchrun` (DDP) in a child process and its
metrics reach `on_metrics` by following metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from prefect.artifacts import create_table_artifact

from tasks.monitoring.live_metrics import MetricsStream
from tasks.monitoring.progress_artifact import ProgressBar
from tasks.monitoring.train_monitor import TrainingMonitor
from tasks.retries import retry_only_on
from tasks.storage.artifacts import Artifact, materialize, phase_fingerprint, publish, scratch_dir
from tasks.storage.cache_records import artifact_cache
from tasks.storage.store_sync import WorkMirror
from tasks.tokenizer import read_split
from tasks.tracking.mlflow_run import RunRef
from tinyllama_model.checkpoint import update_model_config
from tinyllama_model.data import write_packed
from tinyllama_model.doc_sample import sample_stream
from tinyllama_model.errors import ConfigError
from tinyllama_model.evaluation import mixture_logprobs, sliding_logprobs, tempered_logprobs
from tinyllama_model.mixture import registry
from tinyllama_model.mixture.adaptation import (
    FIT_MAX_TOKENS,
    document_pass,
    fit_learning_rate,
    gradient_scales,
)
from tinyllama_model.mixture.config import MixtureConfig
from tinyllama_model.mixture.expert import STAGES, Expert, FitInputs, Reading
from tinyllama_model.mixture.fitting import (
    chain_logprobs,
    fit_chain,
    fit_weights,
    mixed_logprobs,
    refit_chain,
)
from tinyllama_model.mixture.unadapted import UnadaptedExpert
from tinyllama_model.model import ModelConfig, TinyLlama
from tinyllama_model.tokenizer import EOS_ID, TOKENIZER_FILE, Tokenizer, token_dtype
from tinyllama_model.training.launch import trainer_from_run_dir, write_run_spec
from tinyllama_model.training.run_layout import BEST_DIR, METRICS_FILE, RESULT_FILE
from tinyllama_model.training.train_config import TrainConfig

CODE_VERSION = "3"  # 3: config.json keeps what is fitted after training in its mixture object
log = logging.getLogger(__name__)


def effective_model_config(model_cfg: ModelConfig, tokenizer: Artifact) -> ModelConfig:
    """The model config with vocab_size taken from the tokenizer."""
    vocab = Tokenizer(tokenizer.file(TOKENIZER_FILE)).vocab_size
    if model_cfg.vocab_size != vocab:
        log.info("model.vocab_size %d -> %d (the tokenizer's vocabulary)", model_cfg.vocab_size, vocab)
        model_cfg = dataclasses.replace(model_cfg, vocab_size=vocab)
    return model_cfg


def pack_split(tokens: Artifact, split: str, out: Path, vocab_size: int) -> dict[str, int]:
    """Pack one split of the encode artifact into `out` (EOS-joined); returns token/byte/document counts."""
    counts = {"docs": 0, "bytes": 0}

    def docs():
        for _doc_id, toks, n_bytes in read_split(tokens, split):
            counts["docs"] += 1
            counts["bytes"] += n_bytes
            yield toks

    n = write_packed(docs(), out, token_dtype(vocab_size), eos_id=EOS_ID)
    return {"tokens": n, **counts}


def prepare_run(
    model_cfg: ModelConfig, train_cfg: TrainConfig, tokens: Artifact, tokenizer: Artifact, work: Path
) -> None:
    """Write the packed streams and run.json into the work folder (once; a retry reuses them)."""
    if (work / "run.json").is_file():
        return
    train = pack_split(tokens, "train", work / "train.bin", model_cfg.vocab_size)
    val = pack_split(tokens, "val", work / "val.bin", model_cfg.vocab_size)
    if train["docs"] == 0 or val["docs"] == 0:
        raise ValueError(
            f"the encode artifact {tokens.path} has {train['docs']} training and {val['docs']} validation "
            "documents; both are needed: add documents to the corpus"
        )
    write_run_spec(
        work,
        model_cfg,
        train_cfg,
        token_dtype=str(token_dtype(model_cfg.vocab_size)),
        # every token after the leading EOS is a target; the bytes are those of the held-out texts
        val_bytes_per_token=val["bytes"] / (val["tokens"] - 1),
        tokenizer_file=tokenizer.file(TOKENIZER_FILE),
    )


def split_sample(work: Path, split: str, vocab_size: int, max_tokens: int) -> np.ndarray:
    """At most `max_tokens` of a packed split in the work folder, whole documents spread over it
    (`sample_stream`), read through a memory map: only the sample is held in memory."""
    stream = np.memmap(work / f"{split}.bin", dtype=token_dtype(vocab_size), mode="r")
    return np.array(sample_stream(stream, max_tokens))


def check_experts(model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """Refuse before training what the fits after it would refuse: each wanted expert's `check`, then
    calibration's."""
    mix = train_cfg.mixture
    for expert in registry.EXPERTS:
        if expert.wanted(mix):
            expert.check(mix, model_cfg)
    if mix.calibration_temperatures and model_cfg.logit_softcap is not None:
        raise ConfigError(
            f"train.mixture.calibration_temperatures={list(mix.calibration_temperatures)} divides the logits "
            f"by scaling the final norm, which model.logit_softcap={model_cfg.logit_softcap} would cap "
            "afterwards; set train.mixture.calibration_temperatures=[] or model.logit_softcap=null"
        )


def fit_mixture(model_dir: Path, work: Path, cfg: MixtureConfig) -> tuple[dict[str, Any], np.ndarray]:
    """Calibrate the network's temperature, then fit the experts of the "network" stage (the document
    cache, the corpus n-grams: `registry.EXPERTS`) on the validation split, as the train config asks.

    Each temperature (1 and `calibration_temperatures`) is scored with those experts fitted on it, and the
    best is folded into the weights (`TinyLlama.scale_logits`): the caches take the repeated tokens, so
    the network's confidence is chosen for the ones they leave. The experts' weights go into config.json,
    what they need beside it (the corpus n-grams' training tokens) too. The summary has the validation
    loss (nats per token, sliding windows) of the network alone and after each step; the calibrated
    network's sliding-window log-probabilities of the split come back beside it, for `refit_mixture`.
    """
    model = TinyLlama.from_pretrained(model_dir).eval()
    val = split_sample(work, "val", model.config.vocab_size, cfg.fit_max_tokens)
    temperatures = sorted({1.0, *cfg.calibration_temperatures})
    tempered = tempered_logprobs(model, val, model.config.max_seq_len, temperatures, batch_size=32)
    chain = _chain(_fit_inputs(model, work, cfg), Reading(model, val), stages=("network",))
    fits = [fit_chain(network, [hits for _, _, hits in chain]) for network in tempered]
    best = min(range(len(temperatures)), key=lambda k: -fits[k][1][-1].mean())
    stats: dict[str, Any] = {
        "val_loss_sliding_model_alone": -float(tempered[temperatures.index(1.0)].mean()),
        "fit_val_tokens": len(val),
    }
    if cfg.calibration_temperatures:
        stats["calibration_temperature"] = temperatures[best]
        stats["val_loss_sliding_calibrated"] = -float(tempered[best].mean())
        if temperatures[best] != 1.0:
            model.scale_logits(temperatures[best])
            model.save_pretrained(model_dir, model_dir / TOKENIZER_FILE)
    weights, after = fits[best]
    config: dict[str, Any] = {}
    for (expert, params, (bucket, _, _)), fitted, logprobs in zip(chain, weights, after[1:], strict=True):
        config.update(expert.to_config(params, fitted))
        name = expert.name
        stats.update({f"val_loss_sliding_{name}": -float(logprobs.mean()), f"{name}_matched": _share(bucket)})
        stats.update(expert.save(params, model_dir))
    update_model_config(model_dir, _config_changes(config))
    return stats, tempered[best]


def fit_adaptation(model_dir: Path, work: Path, cfg: MixtureConfig) -> dict[str, Any]:
    """Measure each tensor's step scale, then choose the dynamic-evaluation learning rate (adaptation.py)
    from train.mixture.adapt_lrs on the validation split, scored as `refit_mixture` will mix it: with its best
    share of the unadapted network, then the experts as fitted. None (off) when none beats the network
    unadapted."""
    model = TinyLlama.from_pretrained(model_dir).eval()
    val = split_sample(work, "val", model.config.vocab_size, cfg.fit_max_tokens)[:FIT_MAX_TOKENS]
    unadapted = registry.expert(UnadaptedExpert.name)
    bucket, prob = unadapted.hits(True, Reading(model, val, unadapted=_sliding(model, val)))

    def loss_of(tokens: np.ndarray, logprobs: np.ndarray) -> float:
        share = fit_weights(logprobs, bucket, prob, unadapted.table_shape(True))
        return -float(mixture_logprobs(model, tokens, mixed_logprobs(logprobs, bucket, prob, share)).mean())

    scales = gradient_scales(model, val)
    lr, loss, static = fit_learning_rate(model, val, cfg.adapt_lrs, loss_of, scales)
    update_model_config(model_dir, {"adapt_lr": lr, "adapt_scales": scales if lr is not None else None})
    return {"adapt_lr": lr, "val_loss_adapt_fit_unadapted": static, "val_loss_adapt_fit_adapted": loss}


def refit_mixture(
    model_dir: Path, work: Path, cfg: MixtureConfig, unadapted: np.ndarray | None = None
) -> dict[str, Any]:
    """Fit the mixture again on the validation split, now on what the network predicts with: adapted as
    chosen (weights fitted on the unadapted network trust the experts too much; measurements:
    docs/tuning-log.md), every expert the train config asks for in the registry's order (the unadapted
    network's share, the document cache, the corpus n-grams, then the neural cache on the states of the
    same pass); then each expert's weights once more with the others fixed (`refit_chain`). The summary
    has the validation loss after each. `unadapted`: the network's sliding-window log-probabilities of
    the split, when `fit_mixture` has computed them."""
    model = TinyLlama.from_pretrained(model_dir).eval()
    mcfg = model.config
    val = split_sample(work, "val", mcfg.vocab_size, cfg.fit_max_tokens)
    logprobs, states = document_pass(model, val, mcfg.adapt_lr, mcfg.adapt_scales)
    stats: dict[str, Any] = {"val_loss_refit_network": -float(logprobs.mean())}
    if unadapted is None and mcfg.adapt_lr is not None:  # the unadapted network's share reads it
        unadapted = _sliding(model, val)
    reading = Reading(model, val, unadapted=unadapted, states=states)
    chain = _chain(_fit_inputs(model, work, cfg), reading, stages=STAGES)
    hits = [h for _, _, h in chain]
    fits, after = fit_chain(logprobs, hits)
    for (expert, _, _), mixed in zip(chain, after[1:], strict=True):
        stats[f"val_loss_refit_{expert.name}"] = -float(mixed.mean())
    fits = refit_chain(logprobs, hits, fits)
    stats["val_loss_refit_jointly"] = -float(chain_logprobs(logprobs, hits, fits).mean())
    config: dict[str, Any] = {}
    for (expert, params, _), weights in zip(chain, fits, strict=True):
        config.update(expert.to_config(params, weights))
    update_model_config(model_dir, _config_changes(config))
    return stats


def _fit_inputs(model: TinyLlama, work: Path, cfg: MixtureConfig) -> FitInputs:
    def sample(split: str, max_tokens: int) -> np.ndarray:
        return split_sample(work, split, model.config.vocab_size, max_tokens)

    return FitInputs(model, cfg, sample)


def _chain(fit: FitInputs, reading: Reading, stages: tuple[str, ...]) -> list[tuple[Expert, Any, tuple]]:
    """(expert, its parameters, (bucket, probability of each target, weight-table shape)) of each expert
    of these stages that the train config asks for and the model can have, in the registry's order."""
    chain = []
    for expert in registry.EXPERTS:
        if expert.stage not in stages or not expert.wanted(fit.settings):
            continue
        params = expert.fit_params(fit)
        hits = None if params is None else expert.hits(params, reading)
        if hits is not None:
            chain.append((expert, params, (*hits, expert.table_shape(params))))
    return chain


def _config_changes(config: dict[str, Any]) -> dict[str, Any]:
    """The experts' entries as `ModelConfig` takes them: a field as itself, any other key (an expert
    registered from outside the package) in its `mixture` dict; config.json nests all in one object."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    changes = {k: v for k, v in config.items() if k in fields}
    if extra := {k: v for k, v in config.items() if k not in fields}:
        changes["mixture"] = extra
    return changes


def _sliding(model: TinyLlama, val: np.ndarray) -> np.ndarray:
    """The network's log-probability of each target, read as sliding-window scoring reads it."""
    return sliding_logprobs(model, val, model.config.max_seq_len, batch_size=32)


def _share(bucket: np.ndarray) -> float:
    """The share of targets an expert had a context for."""
    return float((bucket >= 0).mean())


class TrainingCrashed(RuntimeError):
    """A training process died (killed, out of memory, lost peer): worth a retry, which resumes."""


class MetricsTail:
    """Hands each complete row appended to the trainer's metrics.jsonl to `on_row`, like `tail -F`.

    A resumed rank 0 replaces the file (`run_state.truncate_metrics`: the rows up to its checkpoint,
    then its own), so the file is followed by identity, not by name: a new file is read from its top.
    Comparing sizes alone missed a replacement that had already grown past the old offset by the next
    poll; reading on from there started mid-row, and the JSONDecodeError failed a retried training.
    """

    def __init__(self, path: Path, on_row: Callable[[dict], None]):
        self.path, self.on_row = path, on_row
        self.identity: tuple[int, int] | None = None  # (device, inode) of the file being read
        self.offset = 0

    def poll(self) -> None:
        if not self.path.is_file():  # not written yet (a replacement never leaves the name absent)
            return
        with open(self.path) as f:
            st = os.fstat(f.fileno())
            if (st.st_dev, st.st_ino) != self.identity or st.st_size < self.offset:
                self.identity, self.offset = (st.st_dev, st.st_ino), 0
            f.seek(self.offset)
            while (line := f.readline()).endswith("\n"):
                self.on_row(json.loads(line))
                self.offset = f.tell()


def run_torchrun(work: Path, nproc: int, on_metrics: Callable[[dict], None] | None) -> None:
    """Train under torchrun (DDP) in a child process, forwarding metrics rows as they are written."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "tinyllama_model.training.launch", str(work),
    ]  # fmt: skip
    tail = MetricsTail(work / METRICS_FILE, on_metrics or (lambda row: None))
    proc = subprocess.Popen(cmd)
    while proc.poll() is None:
        time.sleep(1.0)
        tail.poll()
    tail.poll()
    if proc.returncode != 0:
        raise TrainingCrashed(f"torchrun training exited with code {proc.returncode} (see its output above)")


def train_fingerprint(
    model_cfg: ModelConfig, train_cfg: TrainConfig, tokens: Artifact, tokenizer: Artifact
) -> str:
    """Where `run_train` publishes: also how a flow finds a model trained elsewhere (the GPU pool)."""
    model_cfg = effective_model_config(model_cfg, tokenizer)
    return phase_fingerprint(
        "train", CODE_VERSION, model=model_cfg, train=train_cfg, tokens=tokens, tokenizer=tokenizer
    )


def run_train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    tokens: Artifact,
    tokenizer: Artifact,
    root: str | Path,
    on_metrics: Callable[[dict], None] | None = None,
) -> Artifact:
    tokens, tokenizer = materialize(tokens), materialize(tokenizer)
    model_cfg = effective_model_config(model_cfg, tokenizer)
    check_experts(model_cfg, train_cfg)
    fp = train_fingerprint(model_cfg, train_cfg, tokens, tokenizer)

    def build(out: Path) -> dict[str, Any]:
        work = scratch_dir(root, "train", fp)
        mirror = WorkMirror(root, "train", fp, work)  # on an object store: checkpoints survive this machine
        mirror.pull()
        prepare_run(model_cfg, train_cfg, tokens, tokenizer, work)
        if train_cfg.nproc_per_node > 1:
            run_torchrun(work, train_cfg.nproc_per_node, mirror.watch(on_metrics))
            result = json.loads((work / RESULT_FILE).read_text())
        else:
            result = trainer_from_run_dir(work, on_metrics=mirror.watch(on_metrics)).fit()
        mirror.push()
        shutil.copytree(work / BEST_DIR, out / "model")
        unadapted = None  # the network's sliding-window log-probabilities of the validation split
        mix = train_cfg.mixture
        wanted = {e.stage for e in registry.EXPERTS if e.wanted(mix)}  # the stages to fit
        if mix.calibration_temperatures or "network" in wanted:
            stats, unadapted = fit_mixture(out / "model", work, mix)
            result.update(stats)
        if mix.adapt_lrs:
            result.update(fit_adaptation(out / "model", work, mix))
        if mix.adapt_lrs or "adapted" in wanted:
            result.update(refit_mixture(out / "model", work, mix, unadapted))
        shutil.copyfile(work / METRICS_FILE, out / METRICS_FILE)
        (out / RESULT_FILE).write_text(json.dumps(result, indent=2))
        return {**result, "vocab_size": model_cfg.vocab_size}

    return publish(root, "train", fp, build)


# -- Prefect ------------------------------------------------------------------------------------------

SUMMARY_ROWS = (
    ("parameters", "num_params"),
    ("steps", "steps"),
    ("tokens", "tokens"),
    ("epochs", "epochs"),
    ("wall time (s)", "wall_time_s"),
    ("tokens/s", "tokens_per_s"),
    ("MFU", "mfu"),
    ("best val bpb", "best_val_bpb"),
    ("final val bpb", "final_val_bpb"),
    ("validation tokens the fits read", "fit_val_tokens"),
    ("training tokens of the corpus n-grams (shipped)", "corpus_ngram_tokens"),
    ("val loss, model alone (sliding windows)", "val_loss_sliding_model_alone"),
    ("calibration: temperature", "calibration_temperature"),
    ("... val loss, model calibrated", "val_loss_sliding_calibrated"),
    ("... with the document cache", "val_loss_sliding_doc_cache"),
    ("... and the corpus n-grams", "val_loss_sliding_corpus_ngrams"),
    ("dynamic evaluation: learning rate", "adapt_lr"),
    ("... val loss unadapted (its first 32k tokens)", "val_loss_adapt_fit_unadapted"),
    ("... and adapted", "val_loss_adapt_fit_adapted"),
)


def loss_curve_rows(metrics_file: Path, max_train_rows: int = 60) -> list[dict[str, Any]]:
    """The loss curve as a Prefect UI table: every validation, the train loss thinned to a readable size."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train_rows = [r for r in rows if "train_loss" in r]
    every = max(1, len(train_rows) // max_train_rows)
    kept = {id(r) for r in train_rows[::every]} | {id(r) for r in rows if "val_loss" in r}
    keys = ("step", "train_loss", "val_loss", "val_bpb", "lr")
    return [{k: r.get(k) for k in keys} for r in rows if id(r) in kept]


@task(
    name="train",
    tags=["gpu"],
    **artifact_cache("train", CODE_VERSION),
    retries=2,
    retry_delay_seconds=10,
    retry_condition_fn=retry_only_on(TrainingCrashed),
)
def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    tokens: Artifact,
    tokenizer: Artifact,
    root: str,
    mlflow_run: RunRef | None = None,
) -> Artifact:
    """Train, shown as it goes: log lines, the progress bar, and the curves in the pipeline's MLflow run."""
    from prefect.logging import get_run_logger

    logger = get_run_logger()
    stream = MetricsStream(mlflow_run, warn=logger.warning) if mlflow_run is not None else None
    bar = ProgressBar("train-progress", "Training: share of the budget used", warn=logger.warning)
    with TrainingMonitor(train_cfg, logger, bar=bar, stream=stream) as monitor:
        artifact = run_train(model_cfg, train_cfg, tokens, tokenizer, root, on_metrics=monitor)
    s = artifact.stats
    rows = [{"metric": name, "value": s[key]} for name, key in SUMMARY_ROWS if key in s]
    create_table_artifact(rows, key="train-summary", description="Training run")
    curve = loss_curve_rows(artifact.file(METRICS_FILE))
    create_table_artifact(curve, key="loss-curve", description="Loss curve (train loss thinned; every eval)")
    return artifact
