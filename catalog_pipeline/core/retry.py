"""One retry rule for the whole pipeline: transient failures are retried with exponential
backoff and jitter until a time budget runs out; permanent ones are raised at once.

The budget (default 5 minutes, `CATALOG_RETRY_BUDGET_S`) outlasts a database restart or
a bucket's throttling window, so a chunk step rides such an outage out instead of
failing. What is retried is one idempotent unit (a ranged read, a chunk's transaction),
so a retry never doubles a row.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from catalog_pipeline.core.errors import RetriesExhaustedError, is_transient, root_cause

BUDGET_SETTING = "CATALOG_RETRY_BUDGET_S"
DEFAULT_BUDGET_SECONDS = 300.0

T = TypeVar("T")
log = logging.getLogger("catalog_pipeline.retry")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff doubles from `first_delay` up to `max_delay` (each wait drawn between half
    and all of it, so that many waiting steps do not return at the same instant); no new
    attempt starts after `budget_seconds`."""

    budget_seconds: float = DEFAULT_BUDGET_SECONDS
    first_delay: float = 0.5
    max_delay: float = 15.0

    @classmethod
    def from_environment(cls, **overrides) -> RetryPolicy:
        value = os.environ.get(BUDGET_SETTING)
        if value:
            try:
                budget = float(value)
            except ValueError:
                raise ValueError(
                    f"{BUDGET_SETTING}={value!r}: give the retry budget in seconds"
                ) from None
            if budget < 0:
                raise ValueError(f"{BUDGET_SETTING}={value!r}: the budget cannot be negative")
            overrides.setdefault("budget_seconds", budget)
        return cls(**overrides)

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (1, 2, …)."""
        ceiling = min(self.max_delay, self.first_delay * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


def retrying(
    call: Callable[[], T],
    what: str,
    policy: RetryPolicy | None = None,
    on_retry: Callable[[int, float, BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """`call()`, retried while it fails transiently and the budget lasts.

    `on_retry(attempt, delay, error)` is told before each wait (default: a log line).
    Permanent errors propagate unchanged; a transient one that outlasts the budget
    becomes `RetriesExhaustedError` (its cause kept), so callers fail without retrying.
    """
    policy = policy or RetryPolicy.from_environment()
    started = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as error:
            if not is_transient(error):
                raise
            elapsed = clock() - started
            delay = policy.delay(attempt)
            if elapsed + delay > policy.budget_seconds:
                raise RetriesExhaustedError(what, attempt, elapsed, root_cause(error)) from error
            (on_retry or _log_retry(what))(attempt, delay, error)
            sleep(delay)


def _log_retry(what: str) -> Callable[[int, float, BaseException], None]:
    def report(attempt: int, delay: float, error: BaseException) -> None:
        log.warning(
            "%s: transient failure (attempt %d), retrying in %.1f s: %s",
            what,
            attempt,
            delay,
            root_cause(error),
            extra={"attempt": attempt, "error_class": type(error).__name__},
        )

    return report


class Retried:
    """`target` with each of its method calls retried by `retrying` (each method must be
    one idempotent unit, such as one transaction)."""

    def __init__(self, target: object, what: str, policy: RetryPolicy | None = None) -> None:
        self._target = target
        self._what = what
        self._policy = policy

    def __getattr__(self, name: str):
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            return retrying(
                lambda: attribute(*args, **kwargs), f"{self._what}.{name}", self._policy
            )

        return call
