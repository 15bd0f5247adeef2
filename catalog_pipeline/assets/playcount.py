"""`playcount_history`: one maintenance pass of the provider backfill (reclaim, enqueue,
drain within the daily quota: `catalog_pipeline.playcount.maintenance_pass`), reported as
metadata."""

import time
from datetime import timedelta

import dagster as dg

from catalog_pipeline.assets.ingest import CATALOG_ITEMS
from catalog_pipeline.core.playcount import (
    DEFAULT_LEASE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_CONSECUTIVE_FAILURES,
    BackfillPolicy,
    Clock,
    fixed_clock,
    parse_moment,
    quota_left,
    utc_now,
)
from catalog_pipeline.core.retry import retrying
from catalog_pipeline.db.playcount import ReclaimResult, provider_history_days
from catalog_pipeline.playcount import maintenance_pass
from catalog_pipeline.resources.catalog import CatalogDatabase
from catalog_pipeline.resources.provider import StatsProvider
from catalog_pipeline.workers import DERIVED_TAGS

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


@dg.asset(
    key=PLAYCOUNT_HISTORY,
    deps=[CATALOG_ITEMS],
    group_name="playcount",
    pool="stats_provider",
    op_tags=DERIVED_TAGS,
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
    result = maintenance_pass(
        engine,
        stats_provider,
        config.policy(),
        worker=f"run:{context.run_id}",
        clock=clock,
        retry_failed=config.retry_failed,
        max_calls=config.max_calls,
        max_consecutive_failures=config.max_consecutive_failures,
    )
    reclaimed, enqueued = result.reclaimed, result.enqueued
    if result.notice:
        context.log.warning(result.notice)
    if reclaimed.at_cap:
        context.log.warning(
            f"{reclaimed.at_cap} queue row(s) stay failed at the attempts cap "
            f"({config.max_attempts}), e.g. {', '.join(reclaimed.at_cap_sample[:5])}"
        )

    context.log.info(
        f"reclaimed {reclaimed.reclaimed}, enqueued {enqueued.enqueued}, "
        f"{result.calls} call(s) ({result.stopped_by}), quota used {result.quota_used}/"
        f"{stats_provider.daily_quota}, {result.queue['pending']} pending"
    )
    return dg.MaterializeResult(
        metadata={
            **reclaim_metadata(reclaimed),
            "retried_after_cap": result.retried_after_cap,
            "enqueued": enqueued.enqueued,
            "skipped": enqueued.skipped,
            "reranked": enqueued.reranked,
            "calls": result.calls,
            **{f"drained/{outcome}": count for outcome, count in result.outcomes.items()},
            "readings": result.readings,
            "stopped_by": result.stopped_by,
            "notice": result.notice or "",
            "quota_budget": stats_provider.daily_quota,
            "quota_used": result.quota_used,
            "quota_left": quota_left(stats_provider.daily_quota, result.quota_used),
            **{f"queue/{status}": count for status, count in result.queue.items()},
            "dagster/row_count": retrying(
                lambda: provider_history_days(engine), "playcount history days"
            ),
            "seconds": round(time.monotonic() - started, 3),
        }
    )
