"""`playcount_history`: one maintenance pass of the provider backfill (reclaim, enqueue,
drain within the daily quota), reported as metadata."""

import time
from datetime import timedelta

import dagster as dg

from catalog_pipeline.assets.ingest import CATALOG_ITEMS
from catalog_pipeline.core.playcount import (
    DEFAULT_LEASE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    DRAIN_OUTCOMES,
    BackfillPolicy,
    Clock,
    DrainReport,
    drain,
    fixed_clock,
    parse_moment,
    quota_left,
    utc_now,
)
from catalog_pipeline.core.retry import Retried, retrying
from catalog_pipeline.db.playcount import (
    PlaycountQueue,
    ReclaimResult,
    enqueue_missing,
    provider_history_days,
    queue_counts,
    quota_used,
    reclaim,
    retry_after_until,
    retry_failed_rows,
)
from catalog_pipeline.resources.catalog import CatalogDatabase
from catalog_pipeline.resources.provider import StatsProvider
from catalog_pipeline.settings import PLAYCOUNT_API_URL

PLAYCOUNT_HISTORY = dg.AssetKey("playcount_history")


class BackfillPolicyConfig(dg.Config):
    """The attempts cap and the claim lease (shared by the pass and the hourly reclaim)."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    lease_minutes: int = int(DEFAULT_LEASE.total_seconds() // 60)
    now: str | None = None  # ISO timestamp: the clock of this run (reproducing a past run)

    def policy(self) -> BackfillPolicy:
        return BackfillPolicy(self.max_attempts, timedelta(minutes=self.lease_minutes))

    def clock(self) -> Clock:
        return utc_now if self.now is None else fixed_clock(parse_moment(self.now))


class PlaycountConfig(BackfillPolicyConfig):
    max_calls: int | None = None  # a cap on this pass's calls, below the daily quota
    max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES  # 0: never stop early
    # Rows that failed `max_attempts` times are skipped with their last error; True gives
    # them a fresh start in this pass (after the cause was fixed).
    retry_failed: bool = False


def reclaim_metadata(result: ReclaimResult) -> dict:
    return {
        "reclaimed": result.reclaimed,
        "reclaimed_failed": result.failed_to_pending,
        "reclaimed_expired_claims": result.expired_to_pending,
        "expired_claims_failed": result.expired_to_failed,
        "abandoned_calls": result.abandoned_calls,
        "at_attempts_cap": result.at_cap,
        "at_attempts_cap_sample": dg.MetadataValue.json(list(result.at_cap_sample)),
    }


def _drain_blocked(stats_provider: StatsProvider, engine, clock: Clock) -> tuple[str, str] | None:
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


@dg.asset(
    key=PLAYCOUNT_HISTORY,
    deps=[CATALOG_ITEMS],
    group_name="playcount",
    pool="stats_provider",
)
def playcount_history(
    context: dg.AssetExecutionContext,
    config: PlaycountConfig,
    catalog_db: CatalogDatabase,
    stats_provider: StatsProvider,
) -> dg.MaterializeResult:
    """Provider play-count history of catalog items with an external_id: each pass returns
    stuck work to the queue, queues new items by play count and drains within the daily quota."""
    started = time.monotonic()
    engine = catalog_db.engine()
    clock = config.clock()
    # Every database step is one transaction, retried on transient errors (core.retry);
    # a claim retried after its commit was lost leaves that row to the lease's reclaim.
    retried = 0
    if config.retry_failed:
        retried = retrying(
            lambda: retry_failed_rows(engine, config.policy(), clock()), "playcount retry"
        )
    reclaimed = retrying(lambda: reclaim(engine, config.policy(), clock()), "playcount reclaim")
    enqueued = retrying(lambda: enqueue_missing(engine, clock()), "playcount enqueue")

    blocked = _drain_blocked(stats_provider, engine, clock)
    if blocked is None:
        notice = None
        report = drain(
            Retried(PlaycountQueue(engine, worker=f"run:{context.run_id}"), "playcount queue"),
            stats_provider.client().fetch,
            stats_provider.daily_quota,
            clock=clock,
            max_calls=config.max_calls,
            max_consecutive_failures=config.max_consecutive_failures,
        )
        if report.retry_after_until is not None:
            notice = (
                "rate limited (HTTP 429): the pass stopped; no call before "
                f"{report.retry_after_until:%Y-%m-%d %H:%M:%S} UTC"
            )
    else:
        stopped_by, notice = blocked
        report = DrainReport(stopped_by=stopped_by)
    if notice:
        context.log.warning(notice)
    if reclaimed.at_cap:
        context.log.warning(
            f"{reclaimed.at_cap} queue row(s) stay failed at the attempts cap "
            f"({config.max_attempts}), e.g. {', '.join(reclaimed.at_cap_sample[:5])}"
        )

    used = retrying(lambda: quota_used(engine, clock()), "playcount quota")
    counts = retrying(lambda: queue_counts(engine), "playcount queue counts")
    context.log.info(
        f"reclaimed {reclaimed.reclaimed}, enqueued {enqueued.enqueued}, "
        f"{report.calls} call(s) ({report.stopped_by}), quota used {used}/"
        f"{stats_provider.daily_quota}, {counts['pending']} pending"
    )
    return dg.MaterializeResult(
        metadata={
            **reclaim_metadata(reclaimed),
            "retried_after_cap": retried,
            "enqueued": enqueued.enqueued,
            "skipped": enqueued.skipped,
            "reranked": enqueued.reranked,
            "calls": report.calls,
            **{f"drained/{outcome}": report.outcomes.get(outcome, 0) for outcome in DRAIN_OUTCOMES},
            "readings": report.readings_written,
            "stopped_by": report.stopped_by,
            "notice": notice or "",
            "quota_budget": stats_provider.daily_quota,
            "quota_used": used,
            "quota_left": quota_left(stats_provider.daily_quota, used),
            **{f"queue/{status}": count for status, count in counts.items()},
            "dagster/row_count": retrying(
                lambda: provider_history_days(engine), "playcount history days"
            ),
            "seconds": round(time.monotonic() - started, 3),
        }
    )
