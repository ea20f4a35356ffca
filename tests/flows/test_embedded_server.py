"""`tinyllama run` gives Prefect's temporary local server minutes to start, unless the user chose a limit,
and refuses a database that the installed Prefect cannot open.

Each case runs in a fresh interpreter with a fresh Prefect home: Prefect reads its settings (environment
and profile) once, at import, so only a new process shows what a new user's `tinyllama run` gets.
"""

from __future__ import annotations

import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import prefect
import pytest
from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

from flows.embedded_server import (
    EMBEDDED_SERVER_STARTUP_S,
    STARTUP_SETTING,
    check_embedded_database,
    sqlite_migrations,
)
from tests.flows.test_cli import TINYLLAMA
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


# -- a database that the installed Prefect cannot open -------------------------------------------------

UNKNOWN_REVISION = "0123abcd4567"  # what a newer Prefect's migration would have left behind


def prefect_database(path: Path, revision: str) -> Path:
    """A SQLite file with alembic's version table, as Prefect's server leaves it after migrating."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        db.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    return path


def embedded(database: Path):
    """Settings as a build without PREFECT_API_URL sees them, with its database at `database`."""
    url = {PREFECT_SERVER_DATABASE_CONNECTION_URL: f"sqlite+aiosqlite:///{database}"}
    return temporary_settings(url, restore_defaults={PREFECT_API_URL})


def test_a_database_from_a_newer_prefect_is_refused_with_the_file_and_the_fixes(tmp_path: Path) -> None:
    db = prefect_database(tmp_path / "home" / "prefect.db", UNKNOWN_REVISION)
    with embedded(db), pytest.raises(ValueError) as refused:
        check_embedded_database()
    message = str(refused.value)
    for needle in (str(db), UNKNOWN_REVISION, prefect.__version__, "pip install -U prefect", "PREFECT_HOME="):
        assert needle in message


def test_databases_this_prefect_can_open_pass(tmp_path: Path) -> None:
    current = prefect_database(tmp_path / "current.db", sqlite_migrations().get_current_head())
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database")
    never_migrated = tmp_path / "empty.db"
    with closing(sqlite3.connect(never_migrated)) as db, db:
        db.execute("CREATE TABLE flow (id TEXT)")  # a database with no alembic_version table
    for db in (current, junk, never_migrated, tmp_path / "absent.db"):
        with embedded(db):
            check_embedded_database()  # the server starts, or reports the problem itself
    stale = prefect_database(tmp_path / "stale.db", UNKNOWN_REVISION)
    with embedded(stale), temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        check_embedded_database()  # a server of the user's own: its database is not ours to read


@pytest.mark.slow  # a fresh `tinyllama` process
def test_run_refuses_a_newer_prefects_database_before_starting_a_server(tmp_path: Path) -> None:
    home = tmp_path / "prefect-home"
    db = prefect_database(home / "prefect.db", UNKNOWN_REVISION)
    done = subprocess.run(
        [*TINYLLAMA, "run", "--preset", "demo"],
        env=offline_env(home),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"the Prefect database {db}" in done.stderr and "PREFECT_HOME=" in done.stderr
    assert "Starting temporary server" not in done.stdout + done.stderr
