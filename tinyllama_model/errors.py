"""The one error type for bad configuration, shared by every layer (model, tasks, flows, CLI).

It lives at the bottom layer so that `tinyllama_model`, `tasks` and `flows` raise the same class and the
CLI turns every one of them into a clear message and exit code 2, never a traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot work as given; the message names the field and the fix."""
