"""The `tinyllama` command as a user types it (a real subprocess, the installed entry point)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tasks.tracking.mlflow_store import URI_VARIABLES
from tests.factories import make_model_dir, train_tiny_tokenizer
from tests.mlflow_globals import mlflow_globals_kept

TINYLLAMA = [sys.executable, "-m", "flows.cli"]


def _run(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*TINYLLAMA, *args], capture_output=True, text=True, input=input, timeout=300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    return make_model_dir(tmp / "model", train_tiny_tokenizer(tmp))


def test_help_explains_every_command() -> None:
    out = _run("--help")
    assert out.returncode == 0
    for command in ("run", "generate", "chat", "eval", "export-hf"):
        assert command in out.stdout


def test_generate_is_reproducible_with_a_seed(model_dir: Path) -> None:
    args = ("generate", "-m", str(model_dir), "--prompt", "The for statement", "-n", "12", "--seed", "7")
    first, second = _run(*args), _run(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout.startswith("The for statement")
    assert len(first.stdout.strip()) > len("The for statement")


def test_generate_several_prompts_without_streaming(model_dir: Path) -> None:
    prompts = ("--prompt", "First prompt:", "--prompt", "Second prompt:")
    out = _run("generate", "-m", str(model_dir), *prompts, "-n", "4", "--seed", "3", "--no-stream")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("First prompt:")
    assert out.stdout.index("Second prompt:") > len("First prompt:")  # each continued in its turn


def test_generate_compiled_writes_the_eager_tokens(model_dir: Path, tmp_path: Path) -> None:
    args = ("generate", "-m", str(model_dir), "--prompt", "The for statement", "-n", "40", "-t", "0")
    eager = _run(*args)
    cache = tmp_path / "inductor"  # Inductor writes its kernels here only when it compiles something
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    compiled = subprocess.run(
        [*TINYLLAMA, *args, "--compile"], capture_output=True, text=True, timeout=300, env=env
    )
    assert eager.returncode == 0 and compiled.returncode == 0, eager.stderr + compiled.stderr
    assert compiled.stdout == eager.stdout
    assert "decoding eager" in compiled.stderr or any(cache.rglob("*.py"))


def test_chat_answers_until_quit(model_dir: Path) -> None:
    out = _run("chat", "-m", str(model_dir), "-n", "5", "--seed", "1", input="Hello\nclass\n/quit\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("> ") == 3  # two answers, then the prompt that read /quit


def test_eval_prints_bits_per_byte(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "held_out.jsonl"
    texts = ["The for statement iterates over a sequence.", "Exceptions are raised with raise."]
    data.write_text("".join(json.dumps({"content": t}) + "\n" for t in texts))
    out = _run("eval", "-m", str(model_dir), "--data", str(data))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["bytes"] == sum(len(t.encode()) for t in texts)
    assert result["bpb"] > 0 and result["tokens"] > 0


def test_a_document_cache_is_scored_and_sampled_and_can_be_left_out(model_dir: Path, tmp_path: Path) -> None:
    cached = tmp_path / "cached"
    shutil.copytree(model_dir, cached)
    config = json.loads((cached / "config.json").read_text())
    config["doc_cache_weights"] = [[[0.9] * 4] * 2] * 3  # trust every match: the output must copy
    (cached / "config.json").write_text(json.dumps(config))
    phrase = "alpha beta gamma delta epsilon"
    data = tmp_path / "repeats.jsonl"
    data.write_text(json.dumps({"content": " ".join([phrase] * 8)}) + "\n")
    scored = _run("eval", "-m", str(cached), "--data", str(data))
    assert scored.returncode == 0, scored.stderr
    result = json.loads(scored.stdout)
    assert result["bpb"] < result["model_bpb"] / 2  # the repeats are nearly free with the cache
    assert result["scored"] == "the mixture: the network with doc_cache"
    alone = _run("eval", "-m", str(cached), "--data", str(data), "--model-only")
    assert alone.returncode == 0, alone.stderr
    network = json.loads(alone.stdout)
    assert network["scored"] == "the network alone" and "model_bpb" not in network
    # The same network over the same tokens; the two passes batch their windows differently, so the
    # float sums may differ in their last digits (they did on a loaded machine).
    assert network["bpb"] == pytest.approx(result["model_bpb"], rel=1e-4)
    assert network["tokens"] == result["tokens"]
    prompt = f"{phrase} {phrase} {phrase} alpha beta"
    args = ("generate", "-m", str(cached), "--prompt", prompt, "-n", "16", "-t", "0", "--no-stream")
    with_cache, alone = _run(*args), _run(*args, "--model-only")
    assert with_cache.returncode == 0 and alone.returncode == 0, with_cache.stderr + alone.stderr
    assert with_cache.stdout.removeprefix(prompt).startswith(" gamma delta")
    assert alone.stdout != with_cache.stdout


def test_eval_names_a_missing_text_field(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text('{"body": "text"}\n')
    out = _run("eval", "-m", str(model_dir), "--data", str(data))
    assert out.returncode == 2
    assert "--text-field" in out.stderr


def test_export_hf_writes_a_transformers_folder(model_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = _run("export-hf", "-m", str(model_dir), "--out", str(tmp_path / "hf"))
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_bad_model_reference_is_a_clear_error(tmp_path: Path) -> None:
    out = _run("generate", "-m", str(tmp_path / "nowhere"), "--prompt", "x")
    assert out.returncode == 2
    assert "neither a model directory nor an MLflow URI" in out.stderr


def test_run_prints_the_resolved_config_and_rejects_typos() -> None:
    out = _run("run", "--preset", "demo", "--set", "train.max_minutes=1", "--print-config")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["train"]["max_minutes"] == 1
    bad = _run("run", "--preset", "demo", "--set", "train.max_minute=1")
    assert bad.returncode == 2
    assert "max_minutes" in bad.stderr


# -- bad input: a clear message naming the input and the fix, exit code 2, never a traceback -----------------


def _refused(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, f"exit {out.returncode}:\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    for needle in needles:
        assert needle in out.stderr, f"{needle!r} not in:\n{out.stderr[-3000:]}"


def _copy_with_config(model_dir: Path, directory: Path, config: str) -> Path:
    shutil.copytree(model_dir, directory)
    (directory / "config.json").write_text(config)
    return directory


def test_a_config_json_that_is_not_an_object_is_refused(model_dir: Path, tmp_path: Path) -> None:
    bad = _copy_with_config(model_dir, tmp_path / "model", "[]")  # null and others: test_checkpoint.py
    _refused(_run("generate", "-m", str(bad), "--prompt", "x", "-n", "2"), str(bad / "config.json"), "object")


def test_a_config_json_that_would_allocate_terabytes_is_refused_before_allocating(
    model_dir: Path, tmp_path: Path
) -> None:
    # 1.3 TB of embeddings, past the bound on vocab_size; every bound is tested in test_checkpoint.py
    config = {**json.loads((model_dir / "config.json").read_text()), "vocab_size": 10**10}
    bad = _copy_with_config(model_dir, tmp_path / "model", json.dumps(config))
    out = _run("generate", "-m", str(bad), "--prompt", "x", "-n", "2")
    _refused(out, str(bad), "config.json", "vocab_size=10000000000")


def test_export_hf_of_a_bad_config_is_refused(model_dir: Path, tmp_path: Path) -> None:
    config = {**json.loads((model_dir / "config.json").read_text()), "dim": "wide"}
    bad = _copy_with_config(model_dir, tmp_path / "model", json.dumps(config))
    _refused(_run("export-hf", "-m", str(bad), "--out", str(tmp_path / "hf")), "dim='wide'")
    assert not (tmp_path / "hf").exists()


def test_a_tokenizer_of_another_vocabulary_is_refused(model_dir: Path, tmp_path: Path) -> None:
    tokenizer = model_dir / "tokenizer.model"  # 512 pieces: more than one model has, fewer than the other
    smaller = make_model_dir(tmp_path / "400", tokenizer, vocab_size=400)
    out = _run("generate", "-m", str(smaller), "--prompt", "The for statement", "-n", "30", "--seed", "1")
    _refused(out, str(smaller / "tokenizer.model"), "512 pieces", "vocab_size=400")
    larger = make_model_dir(tmp_path / "600", tokenizer, vocab_size=600)
    data = tmp_path / "held_out.jsonl"
    data.write_text(json.dumps({"content": "The for statement iterates over a sequence."}) + "\n")
    _refused(_run("eval", "-m", str(larger), "--data", str(data)), "512 pieces", "vocab_size=600")


def test_a_prompt_that_is_not_utf8_is_refused(model_dir: Path) -> None:
    out = subprocess.run(
        [*TINYLLAMA, "generate", "-m", str(model_dir), "--prompt", b"caf\xe9", "-n", "2"],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=300,
    )
    _refused(out, "--prompt", "UTF-8")


def test_a_prompt_past_the_bound_is_refused_by_generate_and_skipped_by_chat(model_dir: Path) -> None:
    long = "7;" * 9_000  # 18,000 tokens of the test tokenizer, and short enough for a command line
    _refused(_run("generate", "-m", str(model_dir), "--prompt", long, "-n", "2"), "longer than the 16,384")
    out = _run("chat", "-m", str(model_dir), "-n", "3", "--seed", "1", input=f"{long}\nclass\n/quit\n")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "longer than the 16,384" in out.stderr
    assert out.stdout.count("> ") == 3  # asked again after the refused line, answered `class`, then /quit


def test_chat_skips_a_line_that_is_not_utf8(model_dir: Path) -> None:
    out = subprocess.run(
        [*TINYLLAMA, "chat", "-m", str(model_dir), "-n", "3", "--seed", "1"],
        input=b"caf\xe9\nclass\n/quit\n",
        capture_output=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    assert b"Traceback" not in out.stderr and b"UTF-8" in out.stderr
    assert out.stdout.count(b"> ") == 3  # asked again after the bad line, answered `class`, then /quit


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("[1, 2]", "an array, not a JSON object"),
        ('{"content": 5}', "a number, not a string"),
    ],  # the other ways a file is not text: tests/tasks/test_evaluate_read_texts.py
)
def test_eval_rows_that_are_not_objects_of_text_are_refused(
    model_dir: Path, tmp_path: Path, line: str, needle: str
) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"content": "A good first row."}) + "\n" + line + "\n")
    _refused(_run("eval", "-m", str(model_dir), "--data", str(data)), f"{data}:2", needle)


def test_set_below_a_plain_value_is_refused() -> None:
    _refused(
        _run("run", "--preset", "demo", "--set", "model.dim.x=1", "--print-config"), "model.dim", "--set"
    )


# -- models from the MLflow registry: clear errors, and no download left behind in TMPDIR ------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> str:
    """A SQLite MLflow store in a temp folder where model_dir is version 1 of `cli-model`, alias champion."""
    import mlflow

    from tasks.tracking.mlflow_store import ensure_experiment, resolve_store
    from tasks.tracking.model_versions import log_and_register

    tmp = tmp_path_factory.mktemp("registry")
    store = resolve_store(f"sqlite:///{tmp / 'mlflow.db'}", tmp)
    with mlflow_globals_kept():
        store.activate()
        experiment_id = ensure_experiment(store.client(), "cli", store.artifact_location)
        with mlflow.start_run(experiment_id=experiment_id):
            version = log_and_register(
                model_dir, "cli-model", {}, serving_defaults={}, example_prompt="The", bundle_code=False
            )
        store.client().set_registered_model_alias("cli-model", "champion", version.version)
    return store.tracking_uri


def _run_in(tmpdir: Path, tracking_uri: str, *args: str) -> subprocess.CompletedProcess:
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in URI_VARIABLES}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, TMPDIR=str(tmpdir))
    return subprocess.run([*TINYLLAMA, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.slow
def test_a_registered_model_runs_and_leaves_no_download_behind(registry: str, tmp_path: Path) -> None:
    args = ("-m", "models:/cli-model@champion")
    out = _run_in(
        tmp_path / "tmp", registry, "generate", *args, "--prompt", "The for", "-n", "3", "--seed", "1"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("The for")
    data = tmp_path / "held_out.jsonl"
    data.write_text(json.dumps({"content": "The for statement iterates over a sequence."}) + "\n")
    evaluated = _run_in(tmp_path / "tmp2", registry, "eval", *args, "--data", str(data))
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "tmp")) == sorted(os.listdir(tmp_path / "tmp2")) == []


@pytest.mark.slow
def test_an_unknown_registered_model_is_refused_and_leaves_nothing_behind(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    ask = ("generate", "-m", "models:/nope@champion", "--prompt", "x")
    out = _run_in(tmp_path / "tmp0", f"sqlite:///{db}", *ask)
    _refused(out, "no MLflow store", "set MLFLOW_TRACKING_URI")
    assert not db.exists()  # a lookup creates no store
    # a store without that model, created through the tracking store first: its set-up holds MLflow's
    # file lock, while the registry store's own set-up of a fresh file can race it (seen under load)
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    mlflow.MlflowClient(f"sqlite:///{db}").search_registered_models()
    out = _run_in(tmp_path / "tmp", f"sqlite:///{db}", *ask)
    _refused(out, "models:/nope@champion", "not found")
    assert os.listdir(tmp_path / "tmp0") == os.listdir(tmp_path / "tmp") == []
