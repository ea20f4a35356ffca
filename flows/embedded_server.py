"""How a build runs Prefect's temporary local server, the one a flow starts when no PREFECT_API_URL is set.

Two of Prefect's defaults suit a long-lived server better than a build on a laptop or a CI box: the
server's call home, and 20 seconds to start. Each is changed only where the user has not chosen
(environment or Prefect profile). And a database that this Prefect cannot open is refused before the
server tries. Only `prefect.settings` is imported at the top, so this loads in a moment.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, MutableMapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import prefect
from prefect.settings import (
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    get_current_settings,
    temporary_settings,
)

if TYPE_CHECKING:
    from alembic.script import ScriptDirectory

ANALYTICS_SETTING = "PREFECT_SERVER_ANALYTICS_ENABLED"


def quiet_server_telemetry(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Turn off the embedded Prefect server's call home, unless the user chose (environment or profile).

    With no PREFECT_API_URL a flow starts Prefect's own server in a subprocess, whose telemetry service
    posts to prefect.io every 10 minutes; offline that logs `ERROR | ... Failed to send telemetry`, which
    reads like a fault of the build. The subprocess takes this process' environment, so a default set
    here, before any flow runs, is what it sees. Returns whether the default was set.
    """
    if ANALYTICS_SETTING in environ or "analytics_enabled" in get_current_settings().server.model_fields_set:
        return False
    environ[ANALYTICS_SETTING] = "false"
    return True


STARTUP_SETTING = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
EMBEDDED_SERVER_STARTUP_S = 180


@contextmanager
def patient_embedded_server() -> Iterator[int]:
    """Give Prefect's temporary local server minutes to start, not 20 seconds, unless the user chose.

    A first build migrates a fresh SQLite database before the server answers, which can take longer than
    Prefect's default of 20 s (docs/tuning-log.md) and then ends the build before its
    first task with `Timed out while attempting to connect to ephemeral Prefect API server`. The client
    reads the timeout from settings loaded at import, so an environment default set now would not be
    seen; `temporary_settings` is. A server that cannot start still fails, only later. Yields the
    timeout in force.
    """
    chosen = STARTUP_SETTING in os.environ
    chosen |= "startup_timeout_seconds" in get_current_settings().server.ephemeral.model_fields_set
    if chosen:
        yield PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
        return
    with temporary_settings({PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: EMBEDDED_SERVER_STARTUP_S}):
        yield EMBEDDED_SERVER_STARTUP_S


def check_embedded_database() -> None:
    """Refuse a SQLite database that a newer Prefect has migrated, naming the file and the two fixes.

    One machine can run two Prefect versions against the same `~/.prefect/prefect.db` (two virtualenvs,
    an upgrade rolled back). The older one's server dies at start on the unknown schema revision, and
    the build only reports a connection timeout minutes later, after thousands of lines of alembic
    tracebacks. Only the embedded server's own SQLite file is read, read-only; a server of the user's
    (PREFECT_API_URL) is left alone, and so is any case this check cannot read.
    """
    from sqlalchemy.engine import make_url

    settings = get_current_settings()
    url = make_url(settings.server.database.connection_url.get_secret_value())
    if settings.api.url or url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return
    path = Path(url.database).expanduser()
    revision = _schema_revision(path) if path.is_file() else None
    if revision is None or _known_to_this_prefect(revision):
        return
    raise ValueError(
        f"the Prefect database {path} was migrated by a newer Prefect than the one installed here "
        f"({prefect.__version__}): its schema revision {revision} is unknown to it, so Prefect's local "
        "server cannot start. Upgrade Prefect in this environment (pip install -U prefect), or give this "
        "build a database of its own: PREFECT_HOME=/path/to/new/folder tinyllama run ..."
    )


def _schema_revision(path: Path) -> str | None:
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:  # not a database, or never migrated: the server will say so itself
        return None
    return row[0] if row else None


def sqlite_migrations() -> ScriptDirectory:
    """The installed Prefect's own SQLite migration scripts, as alembic reads them."""
    from alembic.script import ScriptDirectory

    migrations = Path(prefect.__file__).parent / "server" / "database" / "_migrations"
    return ScriptDirectory(str(migrations), version_locations=[str(migrations / "versions" / "sqlite")])


def _known_to_this_prefect(revision: str) -> bool:
    from alembic.util import CommandError

    try:
        sqlite_migrations().get_revision(revision)
    except CommandError:
        return False
    except Exception:  # Prefect laid its migrations out differently: do not guess, let the server start
        return True
    return True
