"""Errors of the collect phase, split by what a retry can do about them.

`InputError` (and `tinyllama_model.errors.ConfigError`) is bad input: retrying cannot help, so the
Prefect task fails at once.
`TransientSourceError` means the outside world misbehaved (the API is down, too many pages failed):
progress is saved, and a retry of the task resumes where this attempt stopped.
"""

from __future__ import annotations


class InputError(ValueError):
    """A local input cannot be read as documents; the message names the file and the fix."""


class TransientSourceError(RuntimeError):
    """A source failed in a way that a later attempt may not (network, server, rate limits)."""


class TooManyFailuresError(TransientSourceError):
    """More pages failed than the configured fraction allows; the failures are listed."""
