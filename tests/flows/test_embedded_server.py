"""`tinyllama run` gives Prefect's temporary local server minutes to start, unless the user chose a limit.

Each case runs in a fresh interpreter with a fresh Prefect home: Prefect reads its settings (environment
and profile) once, at import, so only a new process shows what a new user's `tinyllama run` gets.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.embedded_server import EMBEDDED_SERVER_STARTUP_S, STARTUP_SETTING
from tests.flows.test_telemetry import offline_env, run_python

# what the build flow sees while it starts, then what is left after the build
PROBE = (
    "from flows.embedded_server import patient_embedded_server\n"
    "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as T\n"
    "with patient_embedded_server() as given:\n"
    "    print(given, T.value())\n"
    "print(T.value())\n"
)


def probe(env: dict[str, str]) -> list[int]:
    done = run_python(PROBE, env)
    assert done.returncode == 0, done.stderr[-3000:]
    return [int(word) for word in done.stdout.split()]


@pytest.mark.slow  # three fresh interpreters importing Prefect
def test_the_server_gets_minutes_unless_the_user_chose(tmp_path: Path) -> None:
    fresh = offline_env(tmp_path / "fresh")
    fresh.pop(STARTUP_SETTING, None)
    prefect_default = 20
    assert probe(fresh) == [EMBEDDED_SERVER_STARTUP_S, EMBEDDED_SERVER_STARTUP_S, prefect_default]

    assert probe({**fresh, STARTUP_SETTING: "7"}) == [7, 7, 7]  # the environment's choice stands

    home = tmp_path / "profiled"
    home.mkdir()
    (home / "profiles.toml").write_text(f'active = "default"\n[profiles.default]\n{STARTUP_SETTING} = "9"\n')
    assert probe({**fresh, "PREFECT_HOME": str(home)}) == [9, 9, 9]  # and so does the profile's
