"""Imports point one way: flows -> tasks -> tinyllama_model, and the model package stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("tinyllama_model", {"prefect", "tasks", "flows", "pyarrow", "httpx"}),
        ("tasks", {"flows"}),
    ],
)
def test_no_upward_imports(package: str, forbidden: set[str]) -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(_imported_roots(path) & forbidden)
        for path in (REPO / package).rglob("*.py")
        if _imported_roots(path) & forbidden
    }
    assert offenders == {}


def test_mlflow_only_in_the_pyfunc_wrapper() -> None:
    users = sorted(p.name for p in (REPO / "tinyllama_model").rglob("*.py") if "mlflow" in _imported_roots(p))
    assert users in ([], ["pyfunc.py"])


def modules_loaded_by(imports: str, watched: tuple[str, ...]) -> list[str]:
    """Which of `watched` a fresh interpreter has in sys.modules after `import <imports>`."""
    code = f"import sys, {imports};print(','.join(sorted(m for m in {watched!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return [m for m in out.stdout.strip().split(",") if m]


def test_importing_the_model_package_pulls_in_neither_prefect_nor_mlflow() -> None:
    imports = "tinyllama_model, tinyllama_model.generate, tinyllama_model.tokenizer"
    assert modules_loaded_by(imports, ("prefect", "mlflow", "transformers", "pyarrow")) == []


def test_the_data_phases_shard_jobs_do_not_load_torch() -> None:
    """A Dask worker unpickling a shard job imports its module; torch would cost it seconds and ~200 MB."""
    imports = (
        "tasks.sources.local, tasks.cleaning.shard_jobs, tasks.cleaning.dedup_stages, tasks.token_shards, "
        "tasks.tokenizer, tasks.storage.artifacts"
    )
    assert modules_loaded_by(imports, ("torch",)) == []
