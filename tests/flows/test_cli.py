"""The `tinyllama` command as a user types it (a real subprocess, the installed entry point)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import make_model_dir, train_tiny_tokenizer

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
