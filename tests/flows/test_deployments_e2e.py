"""The product as operators run it: a real `prefect server` on loopback, `prefect deploy --all`, a
process worker on the `cpu` pool and one on the `gpu` pool, `prefect deployment run`, and the MLflow
registry at the end. Training is handed to the gpu pool's deployment, as on a real GPU machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from tests.flows.helpers import TINY_PRESET
from tests.processes import answers, free_port, stop_group, wait_until

# minutes of deadline everywhere: CI may run this on 2 cores that other work keeps busy
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))
RUN_DEADLINE_S = 1200.0


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("TINYLLAMA_HOME", None)  # `prefect deploy` would bake it into the pull step
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def alive() -> None:
        assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]

    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/api/health"), "prefect server up", alive=alive)
        yield env
    finally:
        stop_group(server)
        log.close()


def _prefect(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [PREFECT, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _worker(env: dict[str, str], pool: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [PREFECT, "worker", "start", "--pool", pool],
        env={**env, "TINYLLAMA_HOME": str(REPO)},
        cwd=REPO,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_for(env: dict[str, str], flow_run_id: str, timeout: float) -> str:
    code = (
        "import sys; from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as c: print(c.read_flow_run(sys.argv[1]).state.type.value)"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = subprocess.run(
            [sys.executable, "-c", code, flow_run_id], env=env, capture_output=True, text=True
        ).stdout.strip()
        if state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            return state
        time.sleep(3)
    return "TIMED OUT"


def test_deploy_run_on_workers_and_pull_the_champion(prefect_server: dict[str, str], tmp_path: Path) -> None:
    env = prefect_server
    _prefect(env, "work-pool", "create", "cpu", "--type", "process")
    _prefect(env, "work-pool", "create", "gpu", "--type", "process")
    deployed = _prefect(env, "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")
    assert "tinyllama-build/nightly" in deployed and "tinyllama-train/gpu" in deployed

    workers = [_worker(env, pool, tmp_path / f"worker-{pool}.log") for pool in ("cpu", "gpu")]
    data = tmp_path / "data"
    try:
        out = _prefect(
            env,
            "deployment",
            "run",
            "tinyllama-build/nightly",
            "--param",
            f"preset={TINY_PRESET}",
            "--param",
            f'overrides=["data_root={data}", "train_deployment=tinyllama-train/gpu"]',
        )
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
        state = _wait_for(env, flow_run_id, timeout=RUN_DEADLINE_S)
        logs = "\n".join((tmp_path / f"worker-{p}.log").read_text()[-3000:] for p in ("cpu", "gpu"))
        assert state == "COMPLETED", logs
        assert "tinyllama-train" in (tmp_path / "worker-gpu.log").read_text()  # trained on the gpu pool
    finally:
        for worker in workers:
            stop_group(worker)

    mlflow.set_tracking_uri(f"sqlite:///{data / 'mlflow' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias("tinyllama", "champion")
    assert int(champion.version) == 1
    [text] = mlflow.pyfunc.load_model("models:/tinyllama@champion").predict(["The for statement"])
    assert isinstance(text, str) and text
