"""The services of a several-machine installation, as the end-to-end test starts them on one host.

One place for the commands and environment of each service, so that `docker/compose.yaml` (checked by
tests/test_compose.py) and tests/flows/test_two_machines_e2e.py start the same things:

    s3        an S3 endpoint (moto's server here, any S3 in production): buckets DATA_BUCKET, ARTIFACT_BUCKET
    prefect   `prefect server start`                                       PREFECT_API_URL=http://host:P/api
    mlflow    `mlflow server`, SQLite backend, artifacts proxied to s3://ARTIFACT_BUCKET
    workers   `prefect worker start --pool cpu|gpu`, each on its own machine: own folder, HOME, TMPDIR
    client    `mlflow.pyfunc.load_model('models:/tinyllama@champion')`, given only MLFLOW_TRACKING_URI

Commands name their programs (`prefect`, `mlflow`, `python`), not paths: a caller puts the right `bin` on
PATH. The one exception is moto, a stand-in for S3 that only the tests start, on this interpreter.
"""

from __future__ import annotations

import sys
from pathlib import Path

HOST = "127.0.0.1"
POOLS = ("cpu", "gpu")
BUILD_DEPLOYMENT = "tinyllama-build/nightly"
TRAIN_DEPLOYMENT = "tinyllama-train/gpu"
DATA_BUCKET = "tinyllama-data"
ARTIFACT_BUCKET = "mlflow-artifacts"
CHAMPION = "models:/tinyllama@champion"

# moto's fixed test credentials; a real installation passes its own through the same variables
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
QUIET_SERVERS = {  # no calls home, no UI build: servers start faster and talk only to the host
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # MLflow 3's job runner (GenAI jobs; the registry needs none) is 8 more processes: 2.4 GiB instead of
    # 0.5 and 40 CPU-seconds instead of 10 in the server's first 30 s, measured on 2 cores
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "DO_NOT_TRACK": "1",
}


def s3_env(endpoint: str) -> dict[str, str]:
    """What every process that reads or writes the buckets needs (botocore and s3fs read AWS_ENDPOINT_URL)."""
    return {**S3_CREDENTIALS, "AWS_ENDPOINT_URL": endpoint, "MLFLOW_S3_ENDPOINT_URL": endpoint}


def s3_server_command(port: int) -> list[str]:
    return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]


def prefect_server_command(port: int) -> list[str]:
    return ["prefect", "server", "start", "--host", HOST, "--port", str(port)]


def prefect_api_url(port: int) -> str:
    return f"http://{HOST}:{port}/api"


def mlflow_server_command(port: int, backend_db: Path | str) -> list[str]:
    """Runs and registry in SQLite; artifacts proxied to S3, so clients need no S3 credentials."""
    return [
        "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{backend_db}",
        "--artifacts-destination", f"s3://{ARTIFACT_BUCKET}",
        "--host", HOST, "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip


def mlflow_tracking_uri(port: int) -> str:
    return f"http://{HOST}:{port}"


def pool_command(pool: str) -> list[str]:
    """Run once per pool before deploying (`prefect deploy` refuses a pool that does not exist)."""
    return ["prefect", "work-pool", "create", pool, "--type", "process"]


def deploy_command() -> list[str]:
    """Run once from the repository root, where TINYLLAMA_HOME is unset (deploy would bake it in)."""
    return ["prefect", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"]


def worker_command(pool: str) -> list[str]:
    return ["prefect", "worker", "start", "--pool", pool, "--type", "process"]


def data_root(prefix: str) -> str:
    return f"s3://{DATA_BUCKET}/{prefix}"


def client_command(prompt: str, max_new_tokens: int) -> list[str]:
    """A consumer of the registry: load the champion through MLflow and print one continuation."""
    code = (
        "import sys, mlflow\n"
        f"model = mlflow.pyfunc.load_model({CHAMPION!r})\n"
        "[text] = model.predict([sys.argv[1]], params={'max_new_tokens': int(sys.argv[2]), 'seed': 0})\n"
        "print(text)"
    )
    return ["python", "-c", code, prompt, str(max_new_tokens)]
