"""Static checks of deployments/prefect.yaml and the Dockerfiles (no Prefect server, no Docker engine).

What `prefect deploy` and `docker build` would only reveal on a real cluster is checked here: the
entrypoints load as the named flows and accept the parameters, the pools match the workers the images
start, schedules parse, the pull step resolves, the images are pinned and run as a non-root user.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
DOCKERFILES = {"cpu": REPO / "docker" / "Dockerfile.cpu", "gpu": REPO / "docker" / "Dockerfile.gpu"}
EXPECTED = {  # deployment -> (flow name, entrypoint, work pool)
    "nightly": ("tinyllama-build", "flows/build.py:build", "cpu"),
    "gpu": ("tinyllama-train", "flows/train.py:train", "gpu"),
}


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    return yaml.safe_load(PREFECT_YAML.read_text())


@pytest.fixture(scope="module")
def deployments(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in project["deployments"]}


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            keyword, _, args = pending.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
            pending = ""
    return instructions


# -- prefect.yaml ---------------------------------------------------------------------------------------


def test_prefect_yaml_is_what_prefect_deploy_reads(project: dict[str, Any]) -> None:
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(project)
    assert {d.name for d in model.deployments} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_deployment_targets_its_flow_and_pool(deployments: dict[str, dict[str, Any]], name: str) -> None:
    flow_name, entrypoint, pool = EXPECTED[name]
    spec = deployments[name]
    assert (spec["flow_name"], spec["entrypoint"], spec["work_pool"]["name"]) == (flow_name, entrypoint, pool)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_entrypoint_loads_the_named_flow_and_accepts_the_parameters(
    deployments: dict[str, dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.flows import load_flow_from_entrypoint

    spec = deployments[name]
    path, _, function = spec["entrypoint"].partition(":")
    assert (REPO / path).is_file(), f"{spec['entrypoint']}: {path} does not exist"
    monkeypatch.chdir(REPO)  # entrypoints are relative to the repository root, as on the worker
    flow = load_flow_from_entrypoint(spec["entrypoint"])
    assert flow.name == spec["flow_name"], f"{path}: @flow(name=...) must be {spec['flow_name']!r}"
    assert flow.fn.__name__ == function
    flow.validate_parameters(spec.get("parameters") or {})  # raises on unknown or invalid parameters


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_job_variables_exist_in_the_process_worker_template(
    deployments: dict[str, dict[str, Any]], name: str
) -> None:
    from prefect.workers.process import ProcessWorker

    known = ProcessWorker.get_default_base_job_template()["variables"]["properties"]
    job_variables = deployments[name]["work_pool"].get("job_variables") or {}
    assert set(job_variables) <= set(known)
    assert all(isinstance(v, str) for v in job_variables.get("env", {}).values())  # env values are strings


def test_nightly_schedule_is_a_valid_utc_cron(deployments: dict[str, dict[str, Any]]) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    (schedule,) = deployments["nightly"]["schedules"]
    assert schedule["timezone"] == "UTC" and schedule.get("active", True)
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # raises on a bad expression
    assert "schedules" not in deployments["gpu"]  # training runs when the build hands it over


def test_pull_step_moves_runs_to_tinyllama_home(
    project: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resolve and run the step as a worker does (run_step: templating against os.environ, then call)."""
    from prefect.deployments.steps.pull import set_working_directory
    from prefect.utilities.templating import apply_values

    (step,) = project["pull"]
    ((name, inputs),) = step.items()
    assert name == "prefect.deployments.steps.set_working_directory"
    monkeypatch.setenv("TINYLLAMA_HOME", str(tmp_path))
    monkeypatch.chdir(REPO)
    resolved = apply_values(inputs, dict(os.environ))
    set_working_directory(**resolved)
    assert Path.cwd() == tmp_path


# -- Dockerfiles ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", sorted(DOCKERFILES))
def test_image_is_pinned_unprivileged_and_starts_the_pool_worker(
    pool: str, deployments: dict[str, dict[str, Any]]
) -> None:
    instructions = parse_dockerfile(DOCKERFILES[pool])
    (base,) = [args for kw, args in instructions if kw == "FROM"]
    image, _, tag = base.partition("@")[0].partition(":")
    assert "@sha256:" in base or re.fullmatch(r"\d+\.\d+\.\d+\S*", tag), f"unpinned base image {base!r}"
    if pool == "cpu":
        assert image == "python" and tag.startswith("3.11.") and tag.endswith("-slim-bookworm")
    else:
        assert image == "pytorch/pytorch" and re.fullmatch(r"[\d.]+-cuda[\d.]+-cudnn\d+-runtime", tag)

    users = [args for kw, args in instructions if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the worker must not run as root"
    keywords = [kw for kw, _ in instructions]
    assert keywords.index("USER") < keywords.index("CMD")

    (cmd,) = [args for kw, args in instructions if kw == "CMD"]
    argv = yaml.safe_load(cmd)  # exec form: a JSON array
    assert argv[:3] == ["prefect", "worker", "start"]
    assert argv[argv.index("--pool") + 1] == pool and argv[argv.index("--type") + 1] == "process"
    assert pool in {spec["work_pool"]["name"] for spec in deployments.values()}


@pytest.mark.parametrize("pool", sorted(DOCKERFILES))
def test_image_installs_the_project_and_sets_the_pull_directory(pool: str) -> None:
    instructions = parse_dockerfile(DOCKERFILES[pool])
    env = " ".join(args for kw, args in instructions if kw == "ENV")
    home = re.search(r"TINYLLAMA_HOME=(\S+)", env)
    assert home, "the pull step of prefect.yaml reads TINYLLAMA_HOME"
    workdirs = [
        args.replace("${TINYLLAMA_HOME}", home.group(1)) for kw, args in instructions if kw == "WORKDIR"
    ]
    assert workdirs[-1] == home.group(1)
    runs = " ".join(args for kw, args in instructions if kw == "RUN")
    assert "pip install --no-deps ." in runs
    for kw, args in instructions:
        if kw == "COPY":
            *sources, _dest = shlex.split(args)
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    if pool == "cpu":
        assert "download.pytorch.org/whl/cpu" in runs  # never the multi-GB CUDA wheel on a CPU worker


@pytest.mark.parametrize("pool", sorted(DOCKERFILES))
def test_build_context_excludes_everything_but_the_sources(pool: str) -> None:
    ignore = DOCKERFILES[pool].with_name(DOCKERFILES[pool].name + ".dockerignore")
    rules = [r.strip() for r in ignore.read_text().splitlines() if r.strip() and not r.startswith("#")]
    assert rules[0] == "**", "start from nothing, so .venv, data and mlruns never enter the context"
    assert not any(
        r.lstrip("!").startswith((".venv", ".tinyllama", "mlruns")) for r in rules if r.startswith("!")
    )


def test_docker_readme_documents_building_and_running_both_images() -> None:
    text = (REPO / "docker" / "README.md").read_text()
    for pool in DOCKERFILES:
        assert f"docker build -f docker/Dockerfile.{pool}" in text
    assert "--gpus all" in text and "PREFECT_API_URL" in text and "MLFLOW_TRACKING_URI" in text
