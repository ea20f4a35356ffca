"""Two machines on one host: the product as operators run it, with nothing shared but the servers.

An S3 endpoint (moto's server), a `prefect server` and an `mlflow server` (SQLite backend, artifacts
proxied to S3) on loopback; `prefect deploy --all`; a cpu worker and a gpu worker, each in a folder of its
own with its own HOME and TMPDIR, sharing no local data: the data root is `s3://...`. The nightly
deployment runs with training handed to the gpu pool. Once the first training checkpoint is in the store
the gpu machine goes away; the run goes back to the queue, a fresh gpu worker in a new folder picks it up
and training resumes from the store. Then a third process, in yet another folder and with no S3
credentials, loads the champion from the MLflow server and generates text.

The commands and environment of each service live in tests/stack.py, which the compose test shares.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tasks.storage.data_root import CACHE_ENV
from tests import stack
from tests.processes import (
    answers,
    children,
    free_port,
    kill_by_environment,
    stop_groups,
    wait_until,
)

# minutes of deadline everywhere: CI may run this on 2 cores that other work keeps busy
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds processes through /proc"),
]
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY_PRESET = REPO / "tests" / "flows" / "tiny.yaml"  # tests/flows/helpers.py names it too
RUN_DEADLINE_S = 1200.0
WORKER_STOP_GRACE_S = 10.0  # docker's default
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
MACHINE_ENV = "TINYLLAMA_TEST_MACHINE"  # marks every process a machine starts, down to its flow runs
TRAIN_OVERRIDES = (
    "train.max_steps=800",  # ample steps after the first checkpoint (step 20) for the kill to land mid-run
    "train.checkpoint_every=20",
    "train.eval_every=1000",
    "train.num_threads=1",  # tiny tensors: a second thread only adds stalls on a shared 2-core host
    "train.dtype=float32",  # no bf16 probe at start
    "train.peak_flops=1e11",  # no matmul measurement at start (MFU is not looked at here)
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Prefect, MLflow or AWS setting, plus `extra`."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "AWS_"))}
    for name in ("TINYLLAMA_HOME", "TINYLLAMA_CACHE", "XDG_CACHE_HOME"):  # deploy bakes TINYLLAMA_HOME in
        kept.pop(name, None)
    return {**kept, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


@dataclass
class Machine:
    """A folder standing in for a machine: its own working directory, HOME, TMPDIR and Prefect home."""

    folder: Path
    env: dict[str, str]

    @classmethod
    def make(cls, parent: Path, name: str, **env: str) -> Machine:
        folder = parent / name
        for sub in ("home", "tmp"):
            (folder / sub).mkdir(parents=True)
        own = {"HOME": str(folder / "home"), "TMPDIR": str(folder / "tmp"), MACHINE_ENV: str(folder)}
        return cls(folder, clean_env(**own, PREFECT_HOME=str(folder / "home" / ".prefect"), **env))

    def start(self, argv: list[str], name: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")  # noqa: SIM115 - the child holds it; closed at exit
        return subprocess.Popen(
            argv, cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def run(self, argv: list[str], cwd: Path | None = None) -> str:
        done = subprocess.run(
            argv,
            cwd=cwd or self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()

    def power_off(self) -> None:
        """Whatever this machine still runs, flow runs in sessions of their own included, is killed."""
        kill_by_environment(MACHINE_ENV, str(self.folder))


@dataclass
class Services:
    s3_endpoint: str
    prefect_api: str
    tracking_uri: str


def _alive(proc: subprocess.Popen, machine: Machine, name: str) -> Callable[[], None]:
    def check() -> None:
        assert proc.poll() is None, f"{name} exited:\n{machine.log(name)[-3000:]}"

    return check


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """S3, Prefect and MLflow servers, each in its own folder; started together, then awaited."""
    ports = {name: free_port() for name in ("s3", "prefect", "mlflow")}
    s3_endpoint = f"http://{stack.HOST}:{ports['s3']}"
    s3 = Machine.make(tmp_path, "s3-server")
    prefect = Machine.make(tmp_path, "prefect-server", **stack.QUIET_SERVERS)
    mlflow = Machine.make(tmp_path, "mlflow-server", **stack.QUIET_SERVERS, **stack.s3_env(s3_endpoint))
    mlflow_cmd = stack.mlflow_server_command(ports["mlflow"], mlflow.folder / "mlflow.db")
    started = [
        (s3, s3.start(stack.s3_server_command(ports["s3"]), "s3"), f"{s3_endpoint}/moto-api/"),
        (
            prefect,
            prefect.start(stack.prefect_server_command(ports["prefect"]), "prefect"),
            f"{stack.prefect_api_url(ports['prefect'])}/health",
        ),
        (mlflow, mlflow.start(mlflow_cmd, "mlflow"), f"{stack.mlflow_tracking_uri(ports['mlflow'])}/health"),
    ]
    try:
        for (machine, proc, health), name in zip(started, ("s3", "prefect", "mlflow"), strict=True):
            wait_until(
                lambda url=health: answers(url), f"{name} server up", alive=_alive(proc, machine, name)
            )
        _create_buckets(s3_endpoint)
        api, tracking = stack.prefect_api_url(ports["prefect"]), stack.mlflow_tracking_uri(ports["mlflow"])
        yield Services(s3_endpoint, api, tracking)
    finally:
        stop_groups([proc for _, proc, _ in started])
        for machine, _, _ in started:
            machine.power_off()


def _s3(endpoint: str):
    import s3fs

    creds = stack.S3_CREDENTIALS
    return s3fs.S3FileSystem(
        key=creds["AWS_ACCESS_KEY_ID"],
        secret=creds["AWS_SECRET_ACCESS_KEY"],
        client_kwargs={"endpoint_url": endpoint, "region_name": creds["AWS_DEFAULT_REGION"]},
        skip_instance_cache=True,
    )


def _create_buckets(endpoint: str) -> None:
    import boto3

    creds = stack.S3_CREDENTIALS
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
        region_name=creds["AWS_DEFAULT_REGION"],
    )
    for bucket in (stack.DATA_BUCKET, stack.ARTIFACT_BUCKET):
        s3.create_bucket(Bucket=bucket)


# -- the Prefect REST API, read with plain HTTP (no Prefect client, no settings of this process) ---------


def _state(api: str, run_id: str) -> str:
    run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=30).raise_for_status().json()
    return (run.get("state") or {}).get("type", "NONE")


def _deployment_children(api: str, parent_id: str) -> list[dict]:
    """Flow runs that `parent_id` started through `run_deployment` (not its in-process subflows)."""
    body = {"flow_runs": {"parent_flow_run_id": {"any_": [parent_id]}}}
    runs = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=30).raise_for_status().json()
    return [run for run in runs if run["deployment_id"]]


def _state_history(api: str, run_id: str) -> list[str]:
    rows = httpx.get(f"{api}/flow_run_states/", params={"flow_run_id": run_id}, timeout=30).json()
    return [row["name"] for row in sorted(rows, key=lambda r: r["timestamp"])]


@dataclass
class Worker:
    """`prefect worker start` on a machine of its own."""

    machine: Machine
    proc: subprocess.Popen

    def check(self) -> None:
        _alive(self.proc, self.machine, "worker")()

    def log(self) -> str:
        return self.machine.log("worker")

    def take_down(self, api: str, flow_run_id: str) -> None:
        """The machine goes away mid-run as a drained one does: its worker is frozen so it takes no new
        work, the flow run's process group gets SIGTERM, then whatever is left of the machine is killed.

        With deployments/prefect.yaml's gpu job variables that group is the worker's own and holds
        Prefect's supervisor (`prefect flow-run execute`), which hands the run back to the queue.
        """
        [flow_run_process] = children(self.proc.pid)
        os.kill(self.proc.pid, signal.SIGSTOP)
        os.killpg(os.getpgid(flow_run_process), signal.SIGTERM)
        wait_until(lambda: _state(api, flow_run_id) != "RUNNING", "the training run no longer Running")
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.machine.power_off()


class Site:
    """The host's machines: an operator's shell, workers, and a client; all talk to `services`."""

    def __init__(self, services: Services, folder: Path) -> None:
        self.services, self.folder = services, folder
        self.api = services.prefect_api
        self.env = {
            "PREFECT_API_URL": self.api,
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "MLFLOW_TRACKING_URI": services.tracking_uri,
            **stack.s3_env(services.s3_endpoint),
        }
        self.operator = Machine.make(folder, "operator", **self.env)
        self.workers: list[Worker] = []

    def start_worker(self, name: str, pool: str) -> Worker:
        """A worker that runs flows from this checkout (TINYLLAMA_HOME, as the images set it)."""
        cache = {CACHE_ENV: str(self.folder / name / "cache")}  # the local side of the s3 data root
        machine = Machine.make(self.folder, name, **self.env, **cache, TINYLLAMA_HOME=str(REPO))
        self.workers.append(
            Worker(machine, machine.start([*stack.worker_command(pool), "--name", name], "worker"))
        )
        return self.workers[-1]

    def deploy(self) -> None:
        """The operator's set-up: both pools (at once), then `prefect deploy --all`."""
        creating = [self.operator.start(stack.pool_command(pool), f"pool-{pool}") for pool in stack.POOLS]
        for proc, pool in zip(creating, stack.POOLS, strict=True):
            assert proc.wait(timeout=600) == 0, self.operator.log(f"pool-{pool}")
        deployed = self.operator.run(stack.deploy_command(), REPO)
        assert stack.BUILD_DEPLOYMENT in deployed and stack.TRAIN_DEPLOYMENT in deployed

    def run_nightly(self, root: str) -> str:
        """`prefect deployment run tinyllama-build/nightly` on the tiny preset, training on the gpu pool."""
        overrides = [f"data_root={root}", f"train_deployment={stack.TRAIN_DEPLOYMENT}", *TRAIN_OVERRIDES]
        params = ["--param", f"preset={TINY_PRESET}", "--param", f"overrides={json.dumps(overrides)}"]
        out = self.operator.run(["prefect", "deployment", "run", stack.BUILD_DEPLOYMENT, *params], REPO)
        return re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)

    def wait(self, ready: Callable[[], bool], what: str, running: list[Worker]) -> float:
        """Poll `ready` while `running` workers stay up; returns the time it became true."""

        def check() -> bool:
            for worker in running:
                worker.check()
            return ready()

        wait_until(check, what, deadline_s=RUN_DEADLINE_S)
        return time.monotonic()

    def stop(self) -> None:
        """The grace `docker stop` gives a container. A `prefect worker start` that gets SIGTERM while its
        flow run is exiting can stay up until killed (seen in full-suite runs: 120 s of 255), and nothing
        is lost by killing it then: the run's state is already on the server."""
        stop_groups([worker.proc for worker in self.workers], grace_s=WORKER_STOP_GRACE_S)
        for worker in self.workers:
            worker.machine.power_off()


def test_two_machines_build_resume_on_another_gpu_worker_and_serve(
    services: Services, tmp_path: Path
) -> None:
    site, api = Site(services, tmp_path), services.prefect_api
    root = stack.data_root("nightly")
    store, fs = root.removeprefix("s3://"), _s3(services.s3_endpoint)
    try:
        site.deploy()
        cpu, gpu = site.start_worker("cpu-machine", "cpu"), site.start_worker("gpu-machine-1", "gpu")
        t0 = time.monotonic()
        build_id = site.run_nightly(root)

        def checkpoint_in_store() -> bool:
            assert _state(api, build_id) not in FINAL, "the build ended before training wrote a checkpoint"
            return bool(fs.glob(f"{store}/train/.work-*/checkpoints/step-*.pt", refresh=True))

        t_checkpoint = site.wait(
            checkpoint_in_store, "the first training checkpoint in the store", [cpu, gpu]
        )
        [train_run] = _deployment_children(api, build_id)
        gpu.take_down(api, train_run["id"])
        t_down = time.monotonic()
        history = _state_history(api, train_run["id"])
        assert history[-1] == "AwaitingRetry", f"training not handed back to the queue: {history}"
        gpu2 = site.start_worker("gpu-machine-2", "gpu")
        t_done = site.wait(lambda: _state(api, build_id) in FINAL, "the build finished", [cpu, gpu2])
        assert _state(api, build_id) == "COMPLETED", "\n".join(w.log()[-4000:] for w in site.workers)
    finally:
        site.stop()

    # the gpu pool trained, twice: the first attempt on machine 1, the finishing one on machine 2
    history = _state_history(api, train_run["id"])
    assert history.count("Running") == 2 and "AwaitingRetry" in history and history[-1] == "Completed", (
        history
    )
    assert train_run["id"] in gpu.log() and train_run["id"] in gpu2.log()
    [manifest] = [p for p in fs.glob(f"{store}/train/*/manifest.json") if "/." not in p]
    stats = json.loads(fs.cat(manifest))["stats"]
    assert stats["resumed_from_step"] is not None and stats["resumed_from_step"] >= 20, stats
    # no local data in common: each machine worked on its own local copy of what it needed
    for worker in (cpu, gpu, gpu2):
        assert any(p.is_file() for p in (worker.machine.folder / "cache").rglob("*")), worker.machine.folder

    alias = httpx.get(
        f"{services.tracking_uri}/api/2.0/mlflow/registered-models/alias",
        params={"name": "tinyllama", "alias": "champion"},
        timeout=30,
    )
    assert alias.raise_for_status().json()["model_version"]["version"] == "1"
    client = Machine.make(tmp_path, "client", MLFLOW_TRACKING_URI=services.tracking_uri)  # no S3 access
    assert client.run(stack.client_command("The for statement", 8)).strip()
    assert fs.glob(f"{stack.ARTIFACT_BUCKET}/**/model.safetensors"), "the registered model is not in S3"
    print(
        f"\ntwo machines: {t_done - t0:.0f} s from `prefect deployment run` to the registered model; "
        f"first checkpoint in the store after {t_checkpoint - t0:.0f} s; gpu machine down in "
        f"{t_down - t_checkpoint:.0f} s; {t_done - t_down:.0f} s from then to the registered model "
        f"(resumed from step {stats['resumed_from_step']})"
    )
