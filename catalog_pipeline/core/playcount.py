"""Playcount backfill rules: what a provider answer means, the attempt cap, the claim
lease, the daily quota, and the drain loop that applies them one claimed item at a time.

Plain Python: the queue store (`catalog_pipeline.db.playcount.PlaycountQueue`), the HTTP
call (`catalog_pipeline.resources.provider`) and the clock are handed in, so every rule
here is testable without a database, a server or waiting.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Protocol

Clock = Callable[[], datetime]

DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_LEASE = timedelta(hours=1)
DEFAULT_DAILY_QUOTA = 1_000
DEFAULT_MAX_CONSECUTIVE_FAILURES = 5
UNITS_PER_CALL = 1
DEFAULT_RETRY_AFTER = timedelta(minutes=1)  # a 429 without a usable Retry-After
MAX_RETRY_AFTER = timedelta(days=1)

# Queue statuses.
PENDING, IN_PROGRESS, DONE, FAILED = "pending", "in_progress", "done", "failed"

# Outcomes: three end a row (`done`); the others leave it `failed` until reclaimed.
OK, NO_DATA, REJECTED = "ok", "no_data", "rejected"
RATE_LIMITED, SERVER_ERROR, TIMEOUT = "rate_limited", "server_error", "timeout"
UNREACHABLE, BAD_RESPONSE, LEASE_EXPIRED = "unreachable", "bad_response", "lease_expired"
DRAIN_OUTCOMES = (
    OK,
    NO_DATA,
    REJECTED,
    RATE_LIMITED,
    SERVER_ERROR,
    TIMEOUT,
    UNREACHABLE,
    BAD_RESPONSE,
)
_TRANSPORT_FAILURES = frozenset({SERVER_ERROR, TIMEOUT, UNREACHABLE})

# Ledger statuses that are not an HTTP status code.
IN_FLIGHT, ABANDONED = "in_flight", "abandoned"
LEDGER_TIMEOUT, LEDGER_UNREACHABLE = "timeout", "unreachable"

# Why a drain stopped.
STOP_QUEUE_EMPTY, STOP_QUOTA, STOP_RATE_LIMITED = "queue_empty", "quota", "rate_limited"
STOP_MAX_CALLS, STOP_PROVIDER_FAILING = "max_calls", "provider_failing"


def utc_now() -> datetime:
    return datetime.now(UTC)


def fixed_clock(moment: datetime) -> Clock:
    """A clock that always reads `moment` (UTC), for reproducing or testing a pass."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return lambda: moment


def parse_moment(text: str) -> datetime:
    """An ISO timestamp as an aware UTC datetime (naive means UTC)."""
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class BackfillPolicy:
    """How often a row may be tried and how long a claim is trusted."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    lease: timedelta = DEFAULT_LEASE

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.lease <= timedelta(0):
            raise ValueError(f"the lease must be positive, got {self.lease}")

    def retryable(self, attempts: int) -> bool:
        """A failed row goes back to pending only below the attempts cap."""
        return attempts < self.max_attempts

    def lease_cutoff(self, now: datetime) -> datetime:
        """Claims made before this moment are presumed dead (their run was killed)."""
        return now - self.lease


def rank_score(play_count: int | None) -> float:
    """The queue order: the latest play count, highest first; unknown counts last."""
    return float(play_count or 0)


def day_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The UTC day holding `now`, as [start, end): the quota's accounting period."""
    start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


def quota_left(daily_quota: int, used: int) -> int:
    return max(0, daily_quota - used)


def can_call(daily_quota: int, used: int) -> bool:
    return used + UNITS_PER_CALL <= daily_quota


@dataclass(frozen=True, slots=True)
class Reading:
    """One day's play count of an item."""

    measured_on: date
    play_count: int


@dataclass(frozen=True, slots=True)
class ProviderResponse:
    """What one call returned: an HTTP status and body, or no answer at all."""

    status: int | None  # None: no HTTP answer (timeout, connection refused, reset)
    body: bytes = b""
    retry_after: str | None = None  # the Retry-After header, verbatim
    timed_out: bool = False
    error: str | None = None  # why there was no answer, or why the answer was unusable
    latency_ms: float | None = None

    @property
    def ledger_status(self) -> str:
        if self.status is not None:
            return str(self.status)
        return LEDGER_TIMEOUT if self.timed_out else LEDGER_UNREACHABLE


@dataclass(frozen=True, slots=True)
class Decision:
    """What a response means for the queue row and the pass."""

    status: str  # DONE or FAILED
    outcome: str
    readings: tuple[Reading, ...] = ()
    error: str | None = None
    stop_pass: bool = False
    retry_after: timedelta | None = None  # only on 429: how long the provider asked us to wait


class HistoryError(ValueError):
    """A 200 answer whose body is not `{"history": [{"date": ..., "value": ...}]}`."""


def parse_history(body: bytes) -> tuple[Reading, ...]:
    """The readings of a 200 answer, one per date (a repeated date keeps its last value)."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HistoryError(f"body is not JSON: {error}") from None
    history = document.get("history") if isinstance(document, dict) else None
    if not isinstance(history, list):
        raise HistoryError('body has no "history" list')
    readings: dict[date, int] = {}
    for position, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise HistoryError(f"history[{position}] is not an object")
        try:
            day = date.fromisoformat(entry["date"])
        except (KeyError, TypeError, ValueError):
            raise HistoryError(f"history[{position}].date is not YYYY-MM-DD") from None
        value = entry.get("value")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise HistoryError(f"history[{position}].value is not a non-negative integer")
        readings[day] = value
    return tuple(Reading(day, value) for day, value in sorted(readings.items()))


def parse_retry_after(value: str | None, now: datetime) -> timedelta:
    """How long a 429 asks us to wait: delta-seconds or an HTTP date, within [0, 1 day]."""
    wait = None
    if value:
        text = value.strip()
        if text.isdigit():
            wait = timedelta(seconds=int(text))
        else:
            try:
                moment = parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                moment = None
            if moment is not None:
                moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
                wait = moment - now
    if wait is None:
        return DEFAULT_RETRY_AFTER
    return min(max(wait, timedelta(0)), MAX_RETRY_AFTER)


def classify(response: ProviderResponse, now: datetime) -> Decision:
    """The contract: 200 → done/ok with readings; 404 → done/no_data; other 4xx →
    done/rejected; 408, 429 (stops the pass), 5xx, timeouts and no answer → failed.

    Anything else (a 200 with an unusable body, 1xx/3xx, other 2xx) is `bad_response` and
    failed: retried until the attempts cap, never looped on forever.
    """
    status = response.status
    if status is None:
        outcome = TIMEOUT if response.timed_out else UNREACHABLE
        return Decision(FAILED, outcome, error=response.error)
    if status == 200:
        try:
            return Decision(DONE, OK, readings=parse_history(response.body))
        except HistoryError as error:
            return Decision(FAILED, BAD_RESPONSE, error=f"HTTP 200: {error}")
    if status == 429:
        wait = parse_retry_after(response.retry_after, now)
        return Decision(
            FAILED,
            RATE_LIMITED,
            error=f"HTTP 429, Retry-After {response.retry_after or 'absent'}",
            stop_pass=True,
            retry_after=wait,
        )
    if status == 408:
        return Decision(FAILED, TIMEOUT, error="HTTP 408")
    if 500 <= status <= 599:
        return Decision(FAILED, SERVER_ERROR, error=f"HTTP {status}{_excerpt(response.body)}")
    if status == 404:
        return Decision(DONE, NO_DATA)
    if 400 <= status <= 499:
        return Decision(DONE, REJECTED, error=f"HTTP {status}{_excerpt(response.body)}")
    return Decision(FAILED, BAD_RESPONSE, error=f"unexpected HTTP {status}")


def _excerpt(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", errors="replace").strip()
    return f": {text}" if text else ""


@dataclass(frozen=True, slots=True)
class Claim:
    """A queue row taken by one drain, and the ledger row written for its call."""

    queue_id: int
    item_id: int
    external_id: str
    attempts: int  # including this one
    call_id: int


class DrainStore(Protocol):
    """The queue and ledger a drain works on (`catalog_pipeline.db.playcount.PlaycountQueue`)."""

    def claim(self, now: datetime, daily_quota: int) -> Claim | None:
        """Take the top pending row and write its ledger entry, if the quota allows."""

    def quota_used(self, now: datetime) -> int: ...

    def record(
        self, claim: Claim, response: ProviderResponse, decision: Decision, now: datetime
    ) -> int:
        """Store the outcome, the ledger result and the readings; return readings written."""


Fetch = Callable[[str], ProviderResponse]


@dataclass(slots=True)
class DrainReport:
    calls: int = 0
    outcomes: Counter = field(default_factory=Counter)
    readings_written: int = 0
    stopped_by: str = STOP_QUEUE_EMPTY
    retry_after_until: datetime | None = None


def drain(
    store: DrainStore,
    fetch: Fetch,
    daily_quota: int,
    clock: Clock = utc_now,
    max_calls: int | None = None,
    max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
) -> DrainReport:
    """Call the provider for the best-ranked pending rows, one claim at a time.

    Stops when the queue is empty, the day's quota is used, the provider answers 429, the
    pass made `max_calls` calls, or `max_consecutive_failures` calls in a row got no usable
    answer (timeouts, 5xx, refused): an outage then costs a few rows an attempt, not the
    whole queue its attempts budget. 0 disables that breaker.
    """
    report = DrainReport()
    consecutive_failures = 0
    while True:
        if max_calls is not None and report.calls >= max_calls:
            report.stopped_by = STOP_MAX_CALLS
            return report
        now = clock()
        claim = store.claim(now, daily_quota)
        if claim is None:
            exhausted = not can_call(daily_quota, store.quota_used(now))
            report.stopped_by = STOP_QUOTA if exhausted else STOP_QUEUE_EMPTY
            return report
        response = fetch(claim.external_id)
        now = clock()
        decision = classify(response, now)
        report.readings_written += store.record(claim, response, decision, now)
        report.calls += 1
        report.outcomes[decision.outcome] += 1
        if decision.stop_pass:
            report.stopped_by = STOP_RATE_LIMITED
            report.retry_after_until = now + (decision.retry_after or DEFAULT_RETRY_AFTER)
            return report
        if decision.outcome in _TRANSPORT_FAILURES:
            consecutive_failures += 1
            if max_consecutive_failures and consecutive_failures >= max_consecutive_failures:
                report.stopped_by = STOP_PROVIDER_FAILING
                return report
        else:
            consecutive_failures = 0
