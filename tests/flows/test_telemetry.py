"""Offline builds print no `Failed to send telemetry` ERROR: the embedded Prefect server does not call
home unless the user chose so (environment or Prefect profile).

No test lets anything leave the machine: the check is the setting the embedded server runs with (its
own `/admin/settings`), and the subprocess that starts it has its proxies pointed at a closed loopback
port, so even a server that did try to call home could reach nothing but 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.embedded_server import ANALYTICS_SETTING
from tests.processes import free_port

REPO = Path(__file__).resolve().parents[2]


def offline_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    """A fresh Prefect home, no server configured, every proxy a closed loopback port."""
    env = {k: v for k, v in os.environ.items() if k not in (ANALYTICS_SETTING, "PREFECT_API_URL")}
    nowhere = f"http://127.0.0.1:{free_port()}"
    proxies = {k: nowhere for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")}
    return {**env, **proxies, "NO_PROXY": "127.0.0.1,localhost", "PREFECT_HOME": str(prefect_home), **extra}


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow  # a fresh interpreter: in this one, Prefect's settings already hold whatever was exported
def test_off_by_default_and_a_users_choice_stands(tmp_path: Path) -> None:
    code = (
        "import os, flows.build;"
        "from flows.embedded_server import ANALYTICS_SETTING as A, quiet_server_telemetry;"
        "chosen = {A: 'true'};"
        "print(os.environ.get(A), quiet_server_telemetry(chosen), chosen[A])"
    )
    done = run_python(code, offline_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["false", "False", "true"]  # defaulted on import; a choice left alone


@pytest.mark.slow  # a fresh interpreter importing the flow: seconds on a busy machine
def test_a_profile_setting_is_a_choice_too(tmp_path: Path) -> None:
    (tmp_path / "profiles.toml").write_text(
        f'active = "default"\n[profiles.default]\n{ANALYTICS_SETTING} = "true"\n'
    )
    code = f"import os, flows.build; print(os.environ.get({ANALYTICS_SETTING!r}))"
    done = run_python(code, offline_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "None"  # left alone: the profile's `true` reaches the server


@pytest.mark.slow
def test_the_embedded_server_of_a_build_runs_without_telemetry(tmp_path: Path) -> None:
    """What a `tinyllama run` starts: importing the build flow, then Prefect's temporary local server."""
    code = (
        "import json, flows.build\n"
        "from prefect.client.orchestration import get_client\n"
        "with get_client(sync_client=True) as client:\n"
        "    settings = client._client.get('/admin/settings').json()\n"
        "print(json.dumps(settings['server']['analytics_enabled']))\n"
    )
    # minutes to start: the test may share 2 cores with other work
    done = run_python(code, offline_env(tmp_path, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) is False
    assert "Failed to send telemetry" not in done.stdout + done.stderr
