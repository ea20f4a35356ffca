"""The model card of a registered version: what it was built from, how good it is, where it stops.

Assembled from what the register phase already holds, never from a second look at the corpus: the
preprocess artifact (documents per source, from its report.json), the tokenizer and encode artifacts
(vocabulary, bytes per token, token counts), the train artifact (the model's config.json and the
training summary) and the evaluation (bits per byte, samples). One card, three places:

- `README.md` beside the model files of the logged model (it travels with every download);
- the model version's description in the registry, cut to what every MLflow backend stores;
- `card.*` tags on the version, so versions can be searched by what they were built from (MLflow's
  search quotes such keys in backticks: tags.`card.data_fingerprint` = '...').

This module only writes text; `tasks.register` decides where it goes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks import markdown as md
from tasks.storage.artifacts import Artifact
from tinyllama_model.mixture import registry
from tinyllama_model.model_config import flat_config

CARD_FILE = "README.md"
TAG_PREFIX = "card."
# MLflow's SQL stores keep a version description in a VARCHAR(5000) (PostgreSQL and MySQL enforce it)
MAX_DESCRIPTION_CHARS = 5000
PREPROCESS_REPORT = "report.json"  # tasks.preprocess.REPORT_FILE, read here without importing the phase
_MODEL_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len", "tie_embeddings")


@dataclass(frozen=True)
class ModelCard:
    """The facts of one model; `markdown`, `description` and `tags` are views of them."""

    model_name: str
    data_fingerprint: str | None = None
    sources: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> documents in / kept
    documents: int | None = None  # kept by preprocessing
    tokens: dict[str, int] = field(default_factory=dict)  # train/val tokens and documents
    tokenizer: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, float] = field(default_factory=dict)
    samples: Sequence[tuple[str, str]] = ()

    def markdown(self, with_samples: bool = True) -> str:
        parts = [self._head(), self._data(), self._model(), self._quality()]
        if with_samples and self.samples:
            parts.append(_samples(self.samples))
        parts += [self._loading(), self._limits()]
        return "\n\n".join(parts) + "\n"

    def description(self, max_chars: int = MAX_DESCRIPTION_CHARS) -> str:
        """The card for the registry: without the samples if too long, cut as a last resort."""
        text = self.markdown()
        if len(text) > max_chars:
            text = self.markdown(with_samples=False)
        if len(text) > max_chars:
            text = text[: max_chars - 40].rstrip() + f"\n\n[cut: the full card is {CARD_FILE}]\n"
        return text

    def tags(self) -> dict[str, str]:
        """Searchable facts as `card.*` version tags (only the ones known)."""
        cfg, tok = self.model_config, self.tokenizer
        tags = {
            "data_fingerprint": self.data_fingerprint,
            "data_sources": ",".join(f"{s}={v['kept']}" for s, v in self.sources.items()) or None,
            "documents": self.documents,
            "train_tokens": self.tokens.get("train_tokens"),
            "val_tokens": self.tokens.get("val_tokens"),
            "tokenizer": f"sentencepiece-bpe vocab={tok['vocab_size']}" if "vocab_size" in tok else None,
            "model": ", ".join(f"{k}={cfg[k]}" for k in _MODEL_FIELDS if k in cfg) or None,
            "parameters": self.training.get("num_params"),
            "val_bpb": self.evaluation.get("val_bpb"),
        }
        return {TAG_PREFIX + k: str(v) for k, v in tags.items() if v is not None}

    # -- sections ----------------------------------------------------------------------------------------

    def _head(self) -> str:
        params = self.training.get("num_params")
        size = f"{params / 1e6:.2f}M-parameter " if params else ""
        return (
            f"# {self.model_name}: model card\n\n"
            f"A {size}LLaMA-style language model trained from scratch by tinyllama-pipeline. Load it with "
            f"`mlflow.pyfunc.load_model('models:/{self.model_name}@champion')` or "
            f"`tinyllama generate -m <this folder>`."
        )

    def _data(self) -> str:
        lines = ["## Data", "", f"- data fingerprint: `{self.data_fingerprint or 'unknown'}`"]
        if self.documents is not None:
            lines.append(f"- documents after cleaning: {self.documents:,}")
        t = self.tokens
        if "train_tokens" in t:
            lines.append(
                f"- tokens: {t['train_tokens']:,} for training ({t.get('train_docs', 0):,} documents), "
                f"{t.get('val_tokens', 0):,} held out for validation ({t.get('val_docs', 0):,} documents)"
            )
        if self.sources:
            lines += ["", "| source | documents collected | kept |", "|---|---:|---:|"]
            lines += [f"| {md.cell(s)} | {v['in']:,} | {v['kept']:,} |" for s, v in self.sources.items()]
        return "\n".join(lines)

    def _model(self) -> str:
        tok, tr = self.tokenizer, self.training
        cfg = flat_config(dict(self.model_config))  # the mixture's entries as fields, old keys as named now
        lines = ["## Tokenizer and model", ""]
        if "vocab_size" in tok:
            per_token = f", {tok['bytes_per_token']:.2f} bytes per token" if "bytes_per_token" in tok else ""
            vocab = f"vocabulary {tok['vocab_size']:,}{per_token}"
            lines.append(f"- tokenizer: SentencePiece BPE with byte fallback, {vocab}")
        if cfg:
            fitted = ("_weights", "_scales", "mixture")  # fitted tables
            shown = {k: v for k, v in cfg.items() if not k.endswith(fitted)}
            order = [k for k in _MODEL_FIELDS if k in shown] + sorted(
                k for k in shown if k not in _MODEL_FIELDS
            )
            lines.append("- model config: " + ", ".join(f"{k} {cfg[k]}" for k in order))
            if cfg.get("adapt_lr"):
                lines.append(
                    f"- dynamic evaluation: a copy of the network learns from each document as it reads it "
                    f"(SGD, lr {cfg['adapt_lr']}{' scaled per tensor' if cfg.get('adapt_scales') else ''}, "
                    f"every {cfg.get('max_seq_len', 0) // 2} tokens), chosen on the validation split "
                    "(`tinyllama_model/mixture/adaptation.py`)"
                )
            lines += [line for e in registry.EXPERTS if (line := e.card_line(cfg)) is not None]
        if tr:
            trained = [f"{tr[k]:,} {k}" for k in ("steps", "tokens") if k in tr]
            if "wall_time_s" in tr:
                trained.append(f"{tr['wall_time_s'] / 60:.1f} minutes")
            if "device" in tr:
                trained.append(f"on {tr['device']} ({tr.get('dtype', '?')})")
            lines.append("- training: " + ", ".join(trained))
        return "\n".join(lines)

    def _quality(self) -> str:
        ev = self.evaluation
        lines = ["## Quality", ""]
        labels = {
            "val_bpb": "validation bits per byte (lower is better; compares across tokenizers)",
            "val_loss": "validation loss (nats per token)",
            "val_perplexity": "validation perplexity",
            "val_model_alone_bpb": "validation bits per byte of the network alone (no cache, no n-grams)",
        }
        lines += [f"- {label}: {ev[key]:.4f}" for key, label in labels.items() if key in ev]
        if "eval_tokens" in ev:
            lines.append(f"- measured on {int(ev['eval_tokens']):,} held-out tokens, every token scored")
        return "\n".join(lines if len(lines) > 2 else [*lines, "- not evaluated"])

    def _loading(self) -> str:
        """Who chooses the code that loading runs: the pyfunc imports the code shipped with the version."""
        name = self.model_name
        return "\n".join(
            [
                "## Loading it safely",
                "",
                f'- `mlflow.pyfunc.load_model("models:/{name}@champion")` imports and runs the Python code '
                "shipped with that version (its model script and `code/` folder): whoever can register a "
                "version or move an alias in this registry chooses the code your process runs.",
                f"- From a registry you do not control, use "
                f"`tinyllama generate -m models:/{name}/<version>`: "
                "it reads only the weights (safetensors), config.json and tokenizer.model, and runs no code "
                "that came with the model.",
                "- Pin a version number rather than an alias: an alias can be moved to another version "
                "between two loads.",
            ]
        )

    def _limits(self) -> str:
        tokens = self.tokens.get("train_tokens")
        seen = f"{tokens:,} tokens" if tokens else "a small corpus"
        sources = md.text(", ".join(self.sources)) or "its sources"
        context = self.model_config.get("max_seq_len")
        return "\n".join(
            [
                "## Limits",
                "",
                f"- It has seen {seen} from {sources}: it knows only what those texts say, in their "
                "language, style and biases, and nothing after they were collected.",
                "- A base model: it continues text. It does not follow instructions and has no safety "
                "tuning.",
                "- Small models write fluent-looking text that is often wrong or incoherent: never use its "
                "output as fact.",
                f"- It sees at most {context or '?'} tokens of context; anything earlier is cut off.",
                "- The validation figures come from held-out documents of the same corpus; text from "
                "elsewhere scores worse.",
            ]
        )


def _samples(samples: Sequence[tuple[str, str]]) -> str:
    lines = ["## Sample generations", ""]
    for prompt, text in samples:
        lines.append(md.fenced(prompt + text))
    return "\n".join(lines)


def build_card(
    model_name: str,
    model: Artifact,
    model_dir: Path,
    metrics: Mapping[str, float],
    samples: Sequence[tuple[str, str]] | None,
    reports: Mapping[str, Artifact | str | Path],
) -> ModelCard:
    """The card of the model in `model_dir` (from train artifact `model`), from the upstream artifacts.

    `reports` are the register phase's reports; the preprocess, tokenizer and encode artifacts among
    them are found by their phase. A fact whose artifact is missing is left out, never guessed.
    """
    by_phase = {r.phase: r for r in reports.values() if isinstance(r, Artifact)}
    clean, tok, enc = by_phase.get("preprocess"), by_phase.get("tokenizer"), by_phase.get("encode")
    config = json.loads((model_dir / "config.json").read_text())
    tokens = {
        k: enc.stats[k]
        for k in ("train_tokens", "val_tokens", "train_docs", "val_docs")
        if enc and k in enc.stats
    }
    training_keys = ("num_params", "steps", "tokens", "epochs", "wall_time_s", "device", "dtype")
    return ModelCard(
        model_name=model_name,
        data_fingerprint=clean.fingerprint if clean else None,
        sources=_sources(clean),
        documents=clean.stats.get("documents_kept") if clean else None,
        tokens=tokens,
        tokenizer={
            k: v for k, v in (tok.stats if tok else {}).items() if k in ("vocab_size", "bytes_per_token")
        },
        model_config=config,
        training={k: model.stats[k] for k in training_keys if model.stats.get(k) is not None},
        evaluation={k: v for k, v in metrics.items() if k.startswith(("val_", "eval_tokens"))},
        samples=list(samples or []),
    )


def _sources(clean: Artifact | None) -> dict[str, dict[str, int]]:
    """Documents per source, in and kept, from the preprocess report (empty without it)."""
    if clean is None or not clean.file(PREPROCESS_REPORT).is_file():
        return {}
    by_source = json.loads(clean.file(PREPROCESS_REPORT).read_text()).get("by_source", {})
    return {s: {"in": int(v["in"]), "kept": int(v["in"]) - int(v["rejected"])} for s, v in by_source.items()}
