"""The evaluate phase and `tinyllama eval`: loss, perplexity and bits per byte on held-out text, plus samples.

Every target counts: documents are packed as in training (`EOS d1 EOS d2 ... EOS`), and the stream is
scored with sliding windows (`tinyllama_model.evaluation.sliding_nll`), each token once, with at least
`context - stride` tokens of context after the first window. Nothing is truncated or padded.

Bits per byte divides by the UTF-8 size of the text as it stands in its source (the clean corpus for
the phase, the file for `evaluate_file`), so numbers compare across tokenizers and preprocessing choices.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from tasks import markdown as md
from tasks.storage.artifacts import Artifact, materialize, phase_fingerprint, publish
from tasks.storage.cache_records import artifact_cache
from tasks.tokenizer import read_split
from tinyllama_model.data import pack_documents
from tinyllama_model.doc_sample import spread_documents
from tinyllama_model.evaluation import evaluate_stream, scored_with
from tinyllama_model.generate import generate_text
from tinyllama_model.hardware import autocast_for, resolve_device
from tinyllama_model.model import TinyLlama
from tinyllama_model.tokenizer import EOS_ID, Tokenizer

CODE_VERSION = "2"
MODEL_DIR = "model"  # inside the train artifact


class EvaluateConfig(BaseModel):
    prompts: list[str] = Field(
        default=[
            "Artificial intelligence is",
            "The history of machine learning",
            "A neural network",
            "In natural language processing,",
        ],
        description="Prompts for the sample generations stored beside the metrics.",
    )
    max_new_tokens: int = Field(64, ge=1, description="Tokens generated per prompt.")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature (0: greedy).")
    top_k: int | None = Field(50, ge=1, description="Sample among the k most likely tokens (None: all).")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling threshold (None: off).")
    seed: int = Field(1234, description="Sampling seed, so samples are reproducible.")
    stride: int | None = Field(
        None,
        ge=1,
        description="Sliding-window step in tokens; None: half the context (every token still counts).",
    )
    max_tokens: int = Field(
        2_000_000,
        ge=1,
        description=(
            "Score at most this many validation tokens: whole documents spread evenly over the split "
            "(tinyllama_model/doc_sample.py); a smaller split is scored whole. It decides what the "
            "metrics are measured on, so it is part of the phase's fingerprint."
        ),
    )
    batch_size: int = Field(32, ge=1, description="Windows scored per forward pass.")
    device: str = Field("auto", description="auto (cuda if present, else cpu), cpu, cuda, cuda:N.")


# -- scoring --------------------------------------------------------------------------------------------


def score_documents(
    model: TinyLlama,
    docs: list[np.ndarray] | Iterator[np.ndarray],
    n_bytes: int,
    *,
    stride: int | None = None,
    batch_size: int = 32,
    device: str = "auto",
    model_only: bool = False,
) -> dict[str, Any]:
    """Loss, perplexity and bpb over documents packed as in training (every token of every document);
    `model_only`: of the network alone, without the experts or dynamic evaluation."""
    dev = resolve_device(device)
    autocast, _ = autocast_for(dev, "auto")
    model = model.to(dev)
    stream = pack_documents(docs, EOS_ID)
    return evaluate_stream(
        model,
        stream,
        n_bytes,
        stride=stride,
        batch_size=batch_size,
        device=dev,
        autocast=autocast,
        model_only=model_only,
    )


def read_texts(path: Path, text_field: str = "content") -> list[str]:
    """Documents of a jsonl (one object per line), parquet (one row each) or txt (the whole file) file.

    Input that is not text (undecodable bytes, a line that is not a JSON object, a field that is not a
    string) is refused with the file, the line and the fix, before any model is loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return [_utf8(path.read_bytes(), str(path))]
    if suffix == ".jsonl":
        with open(path, "rb") as f:
            texts = [_jsonl_text(line, f"{path}:{n}", text_field) for n, line in enumerate(f, 1)]
        return [t for t in texts if t is not None]
    if suffix == ".parquet":
        schema = pq.ParquetFile(path).schema_arrow
        if text_field not in schema.names:
            raise KeyError(
                f"{path} has no column {text_field!r} (columns: {schema.names}); pass --text-field NAME"
            )
        kind = schema.field(text_field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise ValueError(f"{path}: column {text_field!r} holds {kind}, not text; pass --text-field NAME")
        return pq.read_table(path, columns=[text_field]).column(text_field).to_pylist()
    raise ValueError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .parquet or .txt")


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{where} is not valid UTF-8 (byte {err.start} is {data[err.start : err.start + 1]!r}); "
            "convert the file to UTF-8 (e.g. iconv -f ITS-ENCODING -t UTF-8)"
        ) from err


def _jsonl_text(line: bytes, where: str, text_field: str) -> str | None:
    """The text of one jsonl line (None: a blank line, or no text in the row)."""
    one_object = f'each line holds one JSON object like {{"{text_field}": "some text"}}'
    text = _utf8(line, where)
    if not text.strip():
        return None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON ({err.msg}); {one_object}") from err
    if not isinstance(row, dict):
        raise ValueError(f"{where} is {_json_kind(row)}, not a JSON object; {one_object}")
    if text_field not in row:
        raise KeyError(f"{where} has no field {text_field!r} (fields: {sorted(row)}); pass --text-field NAME")
    value = row[text_field]
    if value is not None and not isinstance(value, str):
        raise ValueError(
            f"{where}: {text_field!r} is {_json_kind(value)}, not a string; give the text as a JSON string, "
            "or pass --text-field NAME for the field that holds it"
        )
    return value


def _json_kind(value: Any) -> str:
    kinds = {dict: "an object", list: "an array", str: "a string", bool: "true/false", type(None): "null"}
    return kinds.get(type(value), "a number")


def evaluate_file(
    model_dir: Path,
    data_path: Path,
    text_field: str = "content",
    *,
    stride: int | None = None,
    batch_size: int = 32,
    device: str = "auto",
    model_only: bool = False,
) -> dict[str, Any]:
    """`tinyllama eval`: loss, perplexity, bpb, tokens and bytes of a model on the documents of a file,
    and what was scored (`scored`: the network alone, or the mixture and its parts).

    `bytes` is the UTF-8 size of the texts as they stand in the file; `tokens` counts every scored
    target (each document's tokens plus the EOS that ends it). `model_only` scores the network alone.
    """
    model_dir = Path(model_dir)
    texts = [t for t in read_texts(Path(data_path), text_field) if t]
    if not texts:
        raise ValueError(f"{data_path} holds no non-empty {text_field!r} text to evaluate on")
    tok = Tokenizer(model_dir)
    model = TinyLlama.from_pretrained(model_dir)
    tok.check_fits(model.config.vocab_size)
    docs = [np.asarray(ids, dtype=np.int64) for ids in tok.encode_batch(texts)]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    options = {"stride": stride, "batch_size": batch_size, "device": device, "model_only": model_only}
    result = score_documents(model, docs, n_bytes, **options)
    return {**result, "documents": len(texts), "scored": scored_with(model, model_only)}


# -- the phase ------------------------------------------------------------------------------------------

# the phase's stats name what they were measured on; with a document cache, bpb is the mixture's
VAL_KEYS = {
    "loss": "val_loss",
    "perplexity": "val_perplexity",
    "bpb": "val_bpb",
    "model_loss": "val_model_alone_loss",
    "model_bpb": "val_model_alone_bpb",
}


def validation_sample(tokens: Artifact, max_tokens: int) -> tuple[list[np.ndarray], int, int]:
    """The validation documents to score, their bytes, and the number in the split: whole documents
    spread evenly over it (`spread_documents`) whose packed stream, each with its EOS, holds at most
    `max_tokens`. Two streamed passes over the split: its lengths, then the documents picked."""
    lengths = np.array([len(toks) + 1 for _, toks, _ in read_split(tokens, "val")], dtype=np.int64)
    if len(lengths) == 0:
        raise ValueError(f"{tokens.path} has no validation documents; re-run encode with >= 2 documents")
    picked = spread_documents(lengths, max_tokens - 1)  # and the stream's closing EOS
    if len(picked) == 0:
        raise ValueError(
            f"evaluate.max_tokens={max_tokens:,} holds no whole validation document (the first has "
            f"{lengths[0]:,} tokens with its EOS); raise evaluate.max_tokens"
        )
    wanted, docs, n_bytes = set(picked.tolist()), [], 0
    for i, (_doc_id, toks, size) in enumerate(read_split(tokens, "val")):
        if i in wanted:
            docs.append(np.array(toks))
            n_bytes += size
    return docs, n_bytes, len(lengths)


def run_evaluate(cfg: EvaluateConfig, model: Artifact, tokens: Artifact, root: str | Path) -> Artifact:
    model, tokens = materialize(model), materialize(tokens)
    fp = phase_fingerprint("evaluate", CODE_VERSION, cfg=cfg, model=model, tokens=tokens)

    def build(out: Path) -> dict[str, Any]:
        model_dir = model.file(MODEL_DIR)
        net = TinyLlama.from_pretrained(model_dir)
        docs, n_bytes, in_split = validation_sample(tokens, cfg.max_tokens)
        metrics = score_documents(
            net, docs, n_bytes, stride=cfg.stride, batch_size=cfg.batch_size, device=cfg.device
        )
        metrics.update(documents=len(docs), documents_in_split=in_split)
        tok = Tokenizer(model_dir)
        with torch.no_grad():
            samples = generate_text(
                net,
                tok,
                cfg.prompts,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                seed=cfg.seed,
            )
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (out / "samples.json").write_text(
            json.dumps(dict(zip(cfg.prompts, samples, strict=True)), indent=2, ensure_ascii=False)
        )
        return {VAL_KEYS.get(k, k): v for k, v in metrics.items()}

    return publish(root, "evaluate", fp, build)


# -- Prefect ----------------------------------------------------------------------------------------------


def evaluation_markdown(stats: dict[str, Any], samples: dict[str, str]) -> str:
    lines = [
        "# Evaluation on held-out documents",
        "",
        "| metric | value |",
        "|---|---|",
        f"| bits per byte | {stats['val_bpb']:.4f} |",
        f"| loss (nats/token) | {stats['val_loss']:.4f} |",
        f"| perplexity | {stats['val_perplexity']:.2f} |",
        f"| documents / tokens / bytes | {stats['documents']:,} / {stats['tokens']:,} / {stats['bytes']:,} |",
        "",
        "## Samples",
    ]
    for prompt, text in samples.items():
        lines += ["", f"**{md.cell(prompt)}**", "", md.fenced(prompt + text)]
    return "\n".join(lines)


@task(name="evaluate", **artifact_cache("evaluate", CODE_VERSION))
def evaluate(cfg: EvaluateConfig, model: Artifact, tokens: Artifact, root: str) -> Artifact:
    artifact = run_evaluate(cfg, model, tokens, root)
    samples = json.loads(artifact.file("samples.json").read_text())
    create_markdown_artifact(evaluation_markdown(artifact.stats, samples), key="evaluation")
    return artifact
