"""docker/compose.yaml starts what the end-to-end test starts (there is no Docker engine here to run it).

tests/flows/test_two_machines_e2e.py runs the installation on one host from the commands and variables
of tests/stack.py: an S3 endpoint, `prefect server`, `mlflow server` with artifacts proxied to S3, a cpu
and a gpu worker. The compose file must start the same programs with the same flags and give each
service the same variables, differing only where a container installation must: PostgreSQL for SQLite,
MinIO for moto, service names for 127.0.0.1, the Prefect UI switched on.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests import stack
from tests.test_deployments import parse_dockerfile

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker" / "compose.yaml"
# What the end-to-end test's operator runs once (inline there): pools, then the deployments.
POOL_COMMAND = "prefect work-pool create {pool} --type process"
DEPLOY_COMMAND = "prefect deploy --all --prefect-file deployments/prefect.yaml"
# Flags whose values name this host's places (addresses, ports, the backend store), not behaviour.
PLACES = ("--host", "--port", "--backend-store-uri")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def without(args: list[str], flags: tuple[str, ...]) -> list[str]:
    """The argv with these flags and their values left out."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in flags:
            skip = True
        else:
            out.append(arg)
    return out


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def address(service_name: str, service: dict[str, Any]) -> str:
    """host:port where the other containers reach a service: its name and the port its command serves."""
    args = argv(service)
    port = flag(args, "--port") if "--port" in args else None
    return f"{service_name}:{port}"


def test_the_services_of_the_end_to_end_test_and_their_backends(services: dict[str, Any]) -> None:
    assert {"postgres", "minio", "buckets", "prefect-server", "mlflow", "deploy"} <= set(services)
    assert {f"worker-{pool}" for pool in stack.POOLS} <= set(services)


def test_prefect_server_is_the_same_command_on_postgresql(services: dict[str, Any]) -> None:
    server = services["prefect-server"]
    assert without(argv(server), PLACES) == without(stack.prefect_server_command(4200), PLACES)
    env = server["environment"]
    expected = {
        k: v for k, v in stack.QUIET_SERVERS.items() if k.startswith("PREFECT_") or k == "DO_NOT_TRACK"
    }
    expected["PREFECT_UI_ENABLED"] = "true"  # for people; the test skips building it
    assert {k: env.get(k) for k in expected} == expected
    database = urlparse(env["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert database.scheme == "postgresql+asyncpg" and database.hostname == "postgres"
    assert database.path == "/" + services["postgres"]["environment"]["POSTGRES_DB"]


def test_mlflow_server_is_the_same_command_on_postgresql_and_minio(services: dict[str, Any]) -> None:
    mlflow = services["mlflow"]
    expected = without(stack.mlflow_server_command(5000, "/x/mlflow.db"), PLACES)
    assert without(argv(mlflow), (*PLACES, "--allowed-hosts")) == expected  # artifacts to the same bucket
    backend = urlparse(flag(argv(mlflow), "--backend-store-uri"))
    assert backend.scheme == "postgresql" and backend.hostname == "postgres"
    init = (REPO / "docker" / "postgres-init.sql").read_text()
    assert f"CREATE DATABASE {backend.path.strip('/')};" in init  # its own database, made at first start
    assert any(
        v.endswith(":/docker-entrypoint-initdb.d/10-mlflow.sql:ro") for v in services["postgres"]["volumes"]
    )
    env = mlflow["environment"]
    assert set(stack.s3_env("http://s3")) <= set(env)
    quiet = {k: v for k, v in stack.QUIET_SERVERS.items() if not k.startswith("PREFECT_")}
    assert {k: env.get(k) for k in quiet} == quiet
    assert address("mlflow", mlflow) in flag(argv(mlflow), "--allowed-hosts").split(",")


@pytest.mark.parametrize("pool", stack.POOLS)
def test_workers_start_like_the_tests_and_reach_every_server(services: dict[str, Any], pool: str) -> None:
    worker = services[f"worker-{pool}"]
    args = argv(worker)
    assert args[: len(stack.worker_command(pool))] == stack.worker_command(pool)
    env = worker["environment"]
    # what the end-to-end test gives each worker "machine"
    assert {"PREFECT_API_URL", "MLFLOW_TRACKING_URI", *stack.s3_env("http://s3")} <= set(env)
    assert urlparse(env["PREFECT_API_URL"]).netloc == address("prefect-server", services["prefect-server"])
    assert urlparse(env["PREFECT_API_URL"]).path == "/api"
    assert urlparse(env["MLFLOW_TRACKING_URI"]).netloc == address("mlflow", services["mlflow"])
    assert (
        env["AWS_ENDPOINT_URL"]
        == services["mlflow"]["environment"]["AWS_ENDPOINT_URL"]
        == "http://minio:9000"
    )
    # the image's own CMD is the same worker, so `docker run` and compose agree
    dockerfile = (COMPOSE.parent / worker["build"]["context"]).resolve() / worker["build"]["dockerfile"]
    (cmd,) = [a for kw, a in parse_dockerfile(dockerfile) if kw == "CMD"]
    assert yaml.safe_load(cmd) == args


def test_gpu_worker_gets_the_gpus_and_one_run_at_a_time(services: dict[str, Any]) -> None:
    worker = services["worker-gpu"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert flag(argv(worker), "--limit") == "1"


def test_buckets_and_credentials_match_minio(services: dict[str, Any]) -> None:
    script = " ".join(argv(services["buckets"]))
    for bucket in (stack.DATA_BUCKET, stack.ARTIFACT_BUCKET):
        assert f"store/{bucket}" in script
    minio, s3 = services["minio"]["environment"], services["mlflow"]["environment"]
    assert (s3["AWS_ACCESS_KEY_ID"], s3["AWS_SECRET_ACCESS_KEY"]) == (
        minio["MINIO_ROOT_USER"],
        minio["MINIO_ROOT_PASSWORD"],
    )
    assert "9000:9000" in services["minio"]["ports"]


def test_deploy_creates_the_pools_and_deployments_the_test_creates(services: dict[str, Any]) -> None:
    script = " ".join(argv(services["deploy"]))
    for pool in stack.POOLS:
        assert POOL_COMMAND.format(pool=pool) in script
    assert f"env -u TINYLLAMA_HOME {DEPLOY_COMMAND}" in script  # never bake the image's path into it
    assert services["deploy"]["working_dir"] == "/opt/tinyllama"


def test_every_file_compose_names_exists(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "build" in service:
            context = (COMPOSE.parent / service["build"]["context"]).resolve()
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).is_file(), f"{name}: {source}"
    images = [s["image"] for s in services.values() if "build" not in s]
    assert all(re.search(r":[\w.-]*\d", image) for image in images), images  # pinned, never :latest
