"""One maintenance pass of the playcount backfill, free of Dagster: the code the
`playcount_history` asset and `catalog-pipeline playcounts backfill` share.

A pass gives capped rows a fresh start when asked, returns stuck work to the queue
(reclaim), queues new items by play count (enqueue), then calls the provider for the
best-ranked rows within the daily quota (drain), unless the provider is not configured or
asked us to wait. Every database step is one transaction, retried on transient errors
(`core.retry`); a claim retried after its commit was lost leaves that row to the lease's
reclaim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from catalog_pipeline.core.playcount import (
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    DRAIN_OUTCOMES,
    BackfillPolicy,
    Clock,
    Fetch,
    ProviderResponse,
    drain,
    utc_now,
)
from catalog_pipeline.core.retry import Retried, retrying
from catalog_pipeline.db.playcount import (
    EnqueueResult,
    ItemFilter,
    PlaycountQueue,
    ReclaimResult,
    enqueue_missing,
    queue_counts,
    quota_used,
    reclaim,
    retry_after_until,
    retry_failed_rows,
)
from catalog_pipeline.settings import PLAYCOUNT_API_URL

if TYPE_CHECKING:
    from catalog_pipeline.resources.provider import StatsProvider


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """What one pass did, as the asset's metadata and the command's summary report it."""

    retried_after_cap: int  # failed rows at the attempts cap given a fresh start
    reclaimed: ReclaimResult
    enqueued: EnqueueResult
    calls: int  # provider calls made
    outcomes: dict[str, int]  # calls per outcome, every one of `DRAIN_OUTCOMES` (0 included)
    readings: int  # provider readings stored
    stopped_by: str  # why the drain stopped, or why it was skipped
    notice: str | None  # a warning for the reader: the drain was skipped or rate limited
    quota_used: int  # quota units used today, after the pass
    queue: dict[str, int]  # queue rows per status, after the pass


def drain_blocked(
    stats_provider: StatsProvider, engine: Engine, clock: Clock
) -> tuple[str, str] | None:
    """Why the drain must not call the provider now, as (stopped_by, notice), or None."""
    if not stats_provider.configured:
        return "not_configured", f"{PLAYCOUNT_API_URL} is not set: the provider drain is skipped"
    until = retrying(lambda: retry_after_until(engine, clock()), "playcount Retry-After")
    if until is not None:
        return (
            "retry_after",
            f"the provider asked to wait (Retry-After) until {until:%Y-%m-%d %H:%M:%S} UTC: "
            "the provider drain is skipped",
        )
    return None


def maintenance_pass(
    engine: Engine,
    stats_provider: StatsProvider,
    policy: BackfillPolicy,
    *,
    worker: str,
    clock: Clock = utc_now,
    items: ItemFilter | None = None,
    retry_failed: bool = False,
    max_calls: int | None = None,
    max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
    on_call: Callable[[], None] | None = None,
) -> MaintenanceReport:
    """Retry capped rows (`retry_failed`), reclaim, enqueue and drain, as `worker` (the name
    the ledger and `claimed_by` show). `items` narrows what is enqueued and drained (the
    reclaim is always the whole queue's); `on_call` runs after each provider call."""
    retried = 0
    if retry_failed:
        retried = retrying(lambda: retry_failed_rows(engine, policy, clock()), "playcount retry")
    reclaimed = retrying(lambda: reclaim(engine, policy, clock()), "playcount reclaim")
    enqueued = retrying(lambda: enqueue_missing(engine, clock(), items), "playcount enqueue")

    blocked = drain_blocked(stats_provider, engine, clock)
    if blocked is None:
        report = drain(
            Retried(PlaycountQueue(engine, worker, items), "playcount queue"),
            _calling(stats_provider.client().fetch, on_call),
            stats_provider.daily_quota,
            clock=clock,
            max_calls=max_calls,
            max_consecutive_failures=max_consecutive_failures,
        )
        stopped_by, calls, readings = report.stopped_by, report.calls, report.readings_written
        outcomes = {outcome: report.outcomes.get(outcome, 0) for outcome in DRAIN_OUTCOMES}
        notice = None
        if report.retry_after_until is not None:
            notice = (
                "rate limited (HTTP 429): the pass stopped; no call before "
                f"{report.retry_after_until:%Y-%m-%d %H:%M:%S} UTC"
            )
    else:
        stopped_by, notice = blocked
        calls = readings = 0
        outcomes = dict.fromkeys(DRAIN_OUTCOMES, 0)

    return MaintenanceReport(
        retried_after_cap=retried,
        reclaimed=reclaimed,
        enqueued=enqueued,
        calls=calls,
        outcomes=outcomes,
        readings=readings,
        stopped_by=stopped_by,
        notice=notice,
        quota_used=retrying(lambda: quota_used(engine, clock()), "playcount quota"),
        queue=retrying(lambda: queue_counts(engine), "playcount queue counts"),
    )


def _calling(fetch: Fetch, on_call: Callable[[], None] | None) -> Fetch:
    """`fetch`, running `on_call` after each call when given."""
    if on_call is None:
        return fetch

    def fetch_and_report(external_id: str) -> ProviderResponse:
        response = fetch(external_id)
        on_call()
        return response

    return fetch_and_report
