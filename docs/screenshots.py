"""Screenshots of a build in both UIs, taken by headless Chromium: the pictures in the README.

Starts `prefect server` (UI on) and `mlflow server` on loopback, each with its state in a temporary
folder, runs a short build against them with `tinyllama run`, and photographs

    docs/prefect-flow-run.png    the Prefect flow-run page: every phase in the graph, its artifacts
                                 (progress bars of collect and train, tables, the registration)
    docs/prefect-train-logs.png  the train task run: its progress line (step, loss, tokens/s, ETA)
    docs/mlflow-run.png          the MLflow run's charts: the loss curves, logged while training ran
    docs/mlflow-model.png        the registered model: the `champion` alias on its version, card.* tags
    docs/mlflow-model-card.png   the version's page: its model card

Needs Debian's `chromium` (or CHROMIUM=/path/to/chrome) and the project's virtualenv:

    .venv/bin/python docs/screenshots.py                      # tiny preset, 200 steps: a few minutes
    .venv/bin/python docs/screenshots.py --preset demo --set train.max_minutes=1 --keep

PNGs are reduced to 256 colours, so each stays well under 300 KB. `--keep` leaves the servers up and
prints their URLs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = REPO / "tests" / "flows" / "tiny.yaml"
# A curve worth looking at, still quick on a laptop CPU: 200 steps of the tiny model, an eval every 40.
DEFAULT_SETS = ["train.max_steps=200", "train.eval_every=40", "train.log_every_s=2", "train.warmup_steps=20"]
# no calls home; no GenAI job runner (8 processes, ~2 GiB, that a model registry does not use)
MLFLOW_QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
WIDTH = 1500
JS_BUDGET_MS = 20_000  # virtual time for the single-page apps to fetch and draw
DEADLINE_S = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} did not answer {url} within {DEADLINE_S:.0f} s")


@contextmanager
def server(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def build(env: dict[str, str], preset: str, sets: list[str], data: Path) -> dict:
    """`tinyllama run` against the servers; returns its JSON summary."""
    argv = [str(BIN / "tinyllama"), "run", "--preset", preset, "--set", f"data_root={data}"]
    for item in sets:
        argv += ["--set", item]
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"the build failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    lines = done.stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")  # the summary is printed last
    return json.loads("\n".join(lines[start:]))


def shoot(url: str, height: int, out: Path, chromium: str) -> None:
    """One page as a PNG, after the page's scripts had JS_BUDGET_MS of virtual time to fetch and draw."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        subprocess.run(
            [
                chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--user-data-dir={profile}", f"--screenshot={out}", f"--window-size={WIDTH},{height}",
                f"--virtual-time-budget={JS_BUDGET_MS}", url,
            ],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    shrink(out)


def shrink(png: Path) -> None:
    """256 colours: UI screenshots are flat colours and text, and a fifth of the bytes."""
    from PIL import Image

    with Image.open(png) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(png, optimize=True)


def pages(summary: dict, prefect_ui: str, mlflow_ui: str) -> dict[str, tuple[str, int]]:
    """The pages to photograph (file name -> URL, window height), from the build's summary.

    Prefect's newer UI (under /v2) is the one whose URLs select a tab. MLflow draws a run's charts in
    alphabetical order, three a row: the window is tall enough to reach train_loss and val_loss.
    """
    from mlflow import MlflowClient

    registered = summary["registered"]
    run = MlflowClient(mlflow_ui).get_run(registered["run_id"])
    flow_run = run.data.tags["prefect.flow_run_id"]
    experiment, model, version = run.info.experiment_id, registered["model_name"], registered["version"]
    return {
        "prefect-flow-run.png": (f"{prefect_ui}/v2/runs/flow-run/{flow_run}?tab=Artifacts", 1150),
        "prefect-train-logs.png": (
            f"{prefect_ui}/v2/runs/task-run/{train_task_run(prefect_ui, flow_run)}",
            950,
        ),
        "mlflow-run.png": (
            f"{mlflow_ui}/#/experiments/{experiment}/runs/{run.info.run_id}/model-metrics",
            1300,
        ),
        "mlflow-model.png": (f"{mlflow_ui}/#/models/{model}", 950),
        "mlflow-model-card.png": (f"{mlflow_ui}/#/models/{model}/versions/{version}", 1400),
    }


def train_task_run(prefect_ui: str, flow_run: str) -> str:
    query = {"flow_runs": {"id": {"any_": [flow_run]}}}
    runs = httpx.post(f"{prefect_ui}/api/task_runs/filter", json=query, timeout=30).json()
    return next(r["id"] for r in runs if r["name"].rsplit("-", 1)[0] == "train")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", default=str(TINY), help="preset name or YAML file (default: the tiny one)"
    )
    parser.add_argument("--set", dest="sets", action="append", help="override, as for `tinyllama run --set`")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="where the PNGs go")
    parser.add_argument("--keep", action="store_true", help="leave the servers running (Ctrl-C to stop)")
    args = parser.parse_args(argv)
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        parser.error("no chromium on PATH: apt-get install chromium, or set CHROMIUM=/path/to/chrome")
    sets = DEFAULT_SETS if args.sets is None else args.sets
    with tempfile.TemporaryDirectory(prefix="tinyllama-screenshots-") as tmp:
        run_servers_and_shoot(Path(tmp), args.preset, sets, args.out, chromium, args.keep)


def run_servers_and_shoot(
    tmp: Path, preset: str, sets: list[str], out: Path, chromium: str, keep: bool
) -> None:
    prefect_port, mlflow_port = free_port(), free_port()
    prefect_ui, mlflow_ui = f"http://127.0.0.1:{prefect_port}", f"http://127.0.0.1:{mlflow_port}"
    base = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DO_NOT_TRACK": "1"}
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "TINYLLAMA_HOME"):
        base.pop(name, None)
    prefect_env = {
        **base,
        "PREFECT_HOME": str(tmp / "prefect"),
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_UI_API_URL": f"{prefect_ui}/api",  # else the UI looks for its API on port 4200
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    mlflow_cmd = [
        str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
        "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(mlflow_port),
        "--workers", "1",
    ]  # fmt: skip
    prefect_cmd = [
        str(BIN / "prefect"),
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(prefect_port),
    ]
    with (
        server(prefect_cmd, prefect_env, tmp / "prefect.log") as prefect,
        server(mlflow_cmd, {**base, **MLFLOW_QUIET}, tmp / "mlflow.log") as mlflow,
    ):
        wait_for(f"{prefect_ui}/api/health", prefect, "prefect server")
        wait_for(f"{mlflow_ui}/health", mlflow, "mlflow server")
        client_env = {**prefect_env, "PREFECT_API_URL": f"{prefect_ui}/api", "MLFLOW_TRACKING_URI": mlflow_ui}
        summary = build(client_env, preset, sets, tmp / "data")
        out.mkdir(parents=True, exist_ok=True)
        for name, (url, height) in pages(summary, prefect_ui, mlflow_ui).items():
            shoot(url, height, out / name, chromium)
            print(f"{out / name}  {(out / name).stat().st_size / 1024:.0f} KB  <- {url}")
        if keep:
            print(f"Prefect UI {prefect_ui}, MLflow UI {mlflow_ui}; Ctrl-C stops both")
            wait_forever(prefect.poll)


def wait_forever(done: Callable[[], int | None]) -> None:
    try:
        while done() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
