"""The `tinyllama` command: build the pipeline, talk to a model, evaluate it, export it.

Each command imports what it needs when it runs, so `tinyllama generate` never starts Prefect and
`tinyllama run` never loads transformers.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Build a small LLaMA-style model from raw text, then generate, chat, evaluate and export it.",
)

ModelRef = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="A model directory (config.json, model.safetensors, tokenizer.model) or an MLflow model URI "
        "such as models:/tinyllama@champion.",
    ),
]


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@contextmanager
def _bad_input_fails() -> Iterator[None]:
    """Bad input ends the command with its message and exit code 2, never a traceback.

    What this project raises for bad input (a file, a model reference, a config) is a ValueError
    (ConfigError, CheckpointError, ModelDirError, ArtifactError, ...) or a missing file, and its message
    names the input and the fix. A KeyError carries a whole message too, which str() would quote.
    """
    try:
        yield
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err))
    except KeyError as err:
        _fail(str(err.args[0]) if err.args else repr(err))


@contextmanager
def _model_dir(ref: str) -> Iterator[Path]:
    """The model directory `ref` names; one downloaded from MLflow is deleted when the block ends."""
    if Path(ref).is_dir():
        from tasks.storage.artifacts import verified_model_dir

        yield verified_model_dir(Path(ref))  # a published model is checked against its manifest first
    elif "://" in ref or ref.startswith(("models:/", "runs:/")):
        from tasks.tracking.model_refs import downloaded_model_dir

        with downloaded_model_dir(ref) as directory:
            yield directory
    else:
        _fail(f"--model {ref!r} is neither a model directory nor an MLflow URI (e.g. models:/name@champion)")


def _load(ref: str, device: str, compile_decode: bool = False):
    import torch

    from tinyllama_model import TinyLlama
    from tinyllama_model.hardware import compile_blocker
    from tinyllama_model.tokenizer import Tokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with _bad_input_fails(), _model_dir(ref) as directory:  # loaded into memory, the files can go
        model = TinyLlama.from_pretrained(directory, map_location=device)
        tokenizer = Tokenizer(directory)
        tokenizer.check_fits(model.config.vocab_size)
    model.eval()
    if compile_decode and (blocker := compile_blocker(torch.device(device))):
        typer.secho(f"--compile: {blocker}; decoding eager", fg=typer.colors.YELLOW, err=True)
    else:
        model.compile_decode = compile_decode
    return model, tokenizer


def _not_utf8(text: str) -> str | None:
    """Why `text` is not UTF-8, or None. Python keeps bytes it cannot decode from the command line (and
    from stdin under a C/POSIX locale) as lone surrogates, which the tokenizer cannot take."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raw = text[err.start : err.end].encode("utf-8", "surrogateescape")
        return f"is not valid UTF-8 (byte {raw!r} at character {err.start}); give the text in UTF-8"
    return None


class Sampling:
    """The sampling options shared by `generate` and `chat`."""

    MaxNew = Annotated[int, typer.Option("--max-new-tokens", "-n", min=1, help="Tokens to generate.")]
    Temperature = Annotated[
        float, typer.Option("--temperature", "-t", min=0.0, help="0 is greedy; higher is more random.")
    ]
    TopK = Annotated[int | None, typer.Option("--top-k", min=1, help="Sample among the k likeliest tokens.")]
    TopP = Annotated[
        float | None, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling: smallest mass-p set.")
    ]
    Repetition = Annotated[
        float, typer.Option("--repetition-penalty", min=1.0, help="Above 1 discourages repeating tokens.")
    ]
    Seed = Annotated[int | None, typer.Option("--seed", help="Fix the sampling for reproducible output.")]
    ModelOnly = Annotated[
        bool,
        typer.Option(
            "--model-only",
            help="Sample from the trained network alone: no document cache, corpus n-grams or adaptation.",
        ),
    ]
    Device = Annotated[str, typer.Option("--device", help="cpu, cuda, or auto.")]
    Compile = Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the one-token decode step: seconds to build once, then faster tokens "
            "(the same greedy output). Pays for long or many generations.",
        ),
    ]


def _sampling(
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    seed: int | None,
    model_only: bool,
) -> dict:
    return dict(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
        model_only=model_only,
    )


@app.command()
def run(
    preset: Annotated[
        str | None,
        typer.Option("--preset", "-p", help="Preset name (demo, wikipedia, cpu-10min) or a YAML file."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override one field, e.g. --set train.max_minutes=10 (repeatable)."),
    ] = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the resolved configuration and exit.")
    ] = False,
) -> None:
    """Run the whole build: collect, preprocess, tokenizer, encode, train, evaluate, register."""
    from flows.config import load_config
    from tinyllama_model.errors import ConfigError

    try:
        config = load_config(preset, overrides or [])
    except ConfigError as err:
        _fail(str(err))
    if print_config:
        typer.echo(config.model_dump_json(indent=2))
        return
    from flows.build import build
    from flows.embedded_server import check_embedded_database, patient_embedded_server

    with _bad_input_fails():
        check_embedded_database()
    with patient_embedded_server():
        summary = build(config=config)
    typer.echo(json.dumps(summary, indent=2, default=str))


@app.command()
def sweep(
    preset: Annotated[str | None, typer.Option("--preset", "-p", help="Preset name or a YAML file.")] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override one field, e.g. --set data_root=s3://b/p."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")
    ] = False,
) -> None:
    """Remove the uploads no manifest names from an object-store data root, once upload_grace_hours old."""
    from datetime import timedelta

    from flows.config import load_config
    from tasks.storage.store_sweep import sweep_uploads

    with _bad_input_fails():
        config = load_config(preset, overrides or [])
        grace = timedelta(hours=config.upload_grace_hours)
        removed = sweep_uploads(config.data_root, grace, dry_run=dry_run)
    typer.echo(json.dumps({"data_root": config.data_root, "dry_run": dry_run, "uploads": removed}, indent=2))


@app.command()
def generate(
    model: ModelRef,
    prompt: Annotated[list[str], typer.Option("--prompt", help="Prompt text (repeat for several prompts).")],
    max_new_tokens: Sampling.MaxNew = 200,
    temperature: Sampling.Temperature = 0.8,
    top_k: Sampling.TopK = 50,
    top_p: Sampling.TopP = 0.95,
    repetition_penalty: Sampling.Repetition = 1.1,
    seed: Sampling.Seed = None,
    model_only: Sampling.ModelOnly = False,
    device: Sampling.Device = "auto",
    stream: Annotated[bool, typer.Option(help="Print tokens as they come (one prompt at a time).")] = True,
    compile_decode: Sampling.Compile = False,
) -> None:
    """Continue one or more prompts."""
    from tinyllama_model.generate import generate_text, stream_text

    for text in prompt:
        if problem := _not_utf8(text):
            _fail(f"--prompt {text!r} {problem} (check the terminal's or the script's encoding)")
    net, tokenizer = _load(model, device, compile_decode)
    options = _sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, model_only)
    with _bad_input_fails():  # a prompt the model refuses (too long) ends the command with the reason
        if stream:
            for text in prompt:
                pieces = stream_text(net, tokenizer, text, **options)
                first = next(pieces, "")  # the prompt is checked before its first piece
                typer.secho(text, bold=True, nl=False)
                for delta in itertools.chain([first], pieces):
                    typer.echo(delta, nl=False)
                typer.echo()
        else:
            completions = generate_text(net, tokenizer, list(prompt), **options)
            for text, completion in zip(prompt, completions, strict=True):
                typer.secho(text, bold=True, nl=False)
                typer.echo(completion)


@app.command()
def chat(
    model: ModelRef,
    max_new_tokens: Sampling.MaxNew = 200,
    temperature: Sampling.Temperature = 0.8,
    top_k: Sampling.TopK = 50,
    top_p: Sampling.TopP = 0.95,
    repetition_penalty: Sampling.Repetition = 1.1,
    seed: Sampling.Seed = None,
    model_only: Sampling.ModelOnly = False,
    device: Sampling.Device = "auto",
    compile_decode: Sampling.Compile = False,
) -> None:
    """An interactive loop: type a prompt, read the continuation. Empty line, /quit or Ctrl-D ends it.

    The model is a plain language model, not instruction-tuned: each prompt is continued on its own.
    """
    from tinyllama_model.generate import stream_text

    net, tokenizer = _load(model, device, compile_decode)
    options = _sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, model_only)
    typer.echo("tinyllama chat — type a prompt; /quit or an empty line to leave.")
    if hasattr(sys.stdin, "reconfigure"):
        sys.stdin.reconfigure(errors="surrogateescape")  # a bad line is answered below, not a traceback
    while True:
        try:
            text = input("> ")
        except (EOFError, KeyboardInterrupt):
            typer.echo()
            break
        if not text.strip() or text.strip() == "/quit":
            break
        if problem := _not_utf8(text):
            typer.secho(f"error: that line {problem}; type it again", fg=typer.colors.RED, err=True)
            continue
        try:
            for delta in stream_text(net, tokenizer, text, **options):
                sys.stdout.write(delta)
                sys.stdout.flush()
        except ValueError as err:  # a prompt the model refuses (too long): say why, keep the session
            typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
            continue
        typer.echo()


@app.command("eval")
def evaluate(
    model: ModelRef,
    data: Annotated[Path, typer.Option("--data", help="Text to score: .jsonl, .parquet or .txt.")],
    text_field: Annotated[
        str, typer.Option("--text-field", help="Field holding the text in jsonl/parquet rows.")
    ] = "content",
    model_only: Annotated[
        bool,
        typer.Option(
            "--model-only",
            help="Score the trained network alone (fast): no experts, no dynamic evaluation.",
        ),
    ] = False,
) -> None:
    """Score a model on a file: prints JSON with loss, perplexity, bits per byte, tokens and bytes.

    Every token of every document counts (sliding windows), and bytes are the UTF-8 size of the text as it
    stands in the file, so bits per byte compare across tokenizers and preprocessing choices. A model
    with experts is scored as the mixture it predicts with (slow with dynamic evaluation); `model_bpb` is
    the network alone, and `--model-only` scores only that. `scored` says which was scored.
    """
    from tasks.evaluate import evaluate_file

    if not data.is_file():
        _fail(f"--data {data} does not exist")
    with _bad_input_fails(), _model_dir(model) as directory:
        result = evaluate_file(directory, data, text_field=text_field, model_only=model_only)
    typer.echo(json.dumps(result, indent=2))


@app.command("export-hf")
def export_hf(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model directory to export.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the Hugging Face model to.")],
) -> None:
    """Write a folder that transformers' LlamaForCausalLM and AutoTokenizer load with from_pretrained."""
    from tinyllama_model.export import export_hf as export

    if not model.is_dir():
        _fail(f"--model {model} is not a model directory")
    with _bad_input_fails():  # a bad config.json, or a model Llama cannot express (named by its flag)
        typer.echo(str(export(model, out)))


if __name__ == "__main__":
    app()
