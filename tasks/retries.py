"""Which failures a Prefect task retries: only the transient ones its phase names; bad input fails at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def retry_if(transient: Callable[[BaseException], bool]) -> Callable[[Any, Any, Any], bool]:
    """A `retry_condition_fn` that retries exactly the failures `transient` accepts."""

    def should_retry(_task: Any, _run: Any, state: Any) -> bool:
        try:
            state.result()
        except Exception as exc:
            return transient(exc)
        return False

    return should_retry


def retry_only_on(*transient: type[BaseException]) -> Callable[[Any, Any, Any], bool]:
    """A `retry_condition_fn` that retries exactly the given exception types."""
    return retry_if(lambda exc: isinstance(exc, transient))
