"""How a build runs Prefect's temporary local server, the one a flow starts when no PREFECT_API_URL is set.

Two of Prefect's defaults suit a long-lived server better than a build on a laptop or a CI box: the
server's call home, and 20 seconds to start. Each is changed only where the user has not chosen
(environment or Prefect profile). Only `prefect.settings` is imported here, so this loads in a moment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager

from prefect.settings import (
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    get_current_settings,
    temporary_settings,
)

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

    A first build migrates a fresh SQLite database before the server answers: ~40 s on 2 cores, and a
    restart took 33 s on a shared host, past Prefect's default of 20 s, which ends the build before its
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
