"""Playcount schedules: `backfill_reclaim_schedule` (hourly) returns stuck and retryable
queue rows to pending; `playcount_maintenance_schedule` (daily, UTC) runs a full pass."""

import dagster as dg

from catalog_pipeline.assets.playcount import (
    PLAYCOUNT_HISTORY,
    BackfillPolicyConfig,
    reclaim_metadata,
)
from catalog_pipeline.core.retry import retrying
from catalog_pipeline.db.playcount import reclaim
from catalog_pipeline.resources.catalog import CatalogDatabase
from catalog_pipeline.schedules import utc_schedule


@dg.op(pool="catalog_db")
def reclaim_backfill_queue(
    context: dg.OpExecutionContext, config: BackfillPolicyConfig, catalog_db: CatalogDatabase
) -> None:
    """Failed rows below the attempts cap and claims older than the lease go back to pending;
    rows at the cap stay failed and are reported. Database errors fail the run."""
    engine = catalog_db.engine()
    result = retrying(
        lambda: reclaim(engine, config.policy(), config.clock()()), "backfill reclaim"
    )
    context.log.info(
        f"reclaimed {result.reclaimed} row(s): {result.failed_to_pending} failed, "
        f"{result.expired_to_pending} expired claim(s); {result.abandoned_calls} call(s) "
        "without a recorded result marked abandoned"
    )
    if result.at_cap:
        context.log.warning(
            f"{result.at_cap} row(s) stay failed at the attempts cap ({config.max_attempts}), "
            f"e.g. {', '.join(result.at_cap_sample[:5])}"
        )
    context.add_output_metadata(reclaim_metadata(result))


@dg.job(
    description="Return failed (below the attempts cap) and expired backfill claims to pending."
)
def backfill_reclaim_job():
    reclaim_backfill_queue()


backfill_reclaim_schedule = utc_schedule(backfill_reclaim_job, "15 * * * *")

playcount_maintenance_job = dg.define_asset_job(
    "playcount_maintenance_job",
    selection=[PLAYCOUNT_HISTORY],
    description="One playcount maintenance pass: reclaim, enqueue, drain within the quota.",
)

# Early in the UTC day: the provider's quota has just been renewed.
playcount_maintenance_schedule = utc_schedule(playcount_maintenance_job, "30 0 * * *")
