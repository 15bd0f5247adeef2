"""`invalid_log_retention_job`, daily at 09:00 UTC: expire old invalid-row logs, the
stats-provider call ledger and the step outputs of runs on Celery workers, in bounded
batches."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from catalog_pipeline.db.retention import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_BATCHES,
    RetentionResult,
    delete_expired_invalid_logs,
    delete_expired_provider_calls,
    delete_expired_step_outputs,
)
from catalog_pipeline.resources.catalog import CatalogDatabase
from catalog_pipeline.schedules import utc_schedule


class RetentionConfig(dg.Config):
    invalid_log_days: int = 90
    provider_call_days: int = 400
    step_output_days: int = 30
    batch_size: int = DEFAULT_BATCH_SIZE
    max_batches: int = DEFAULT_MAX_BATCHES


def _metadata(result: RetentionResult) -> dict:
    metadata = {
        "deleted": result.deleted,
        "batches": result.batches,
        "cutoff": result.cutoff.isoformat(),
    }
    if result.capped:
        metadata["capped"] = True  # reported only when expired rows remain
    return metadata


@dg.op(pool="catalog_db")
def delete_expired_rows(
    context: dg.OpExecutionContext, config: RetentionConfig, catalog_db: CatalogDatabase
) -> None:
    """Delete invalid-row logs, provider calls and step outputs older than their retention
    windows."""
    engine = catalog_db.engine()
    now = datetime.now(UTC)
    limits = {"batch_size": config.batch_size, "max_batches": config.max_batches}
    for result in (
        delete_expired_invalid_logs(
            engine, now - timedelta(days=config.invalid_log_days), **limits
        ),
        delete_expired_provider_calls(
            engine, now - timedelta(days=config.provider_call_days), **limits
        ),
        delete_expired_step_outputs(
            engine, now - timedelta(days=config.step_output_days), **limits
        ),
    ):
        context.log.info(
            f"{result.table}: deleted {result.deleted:,} rows older than "
            f"{result.cutoff:%Y-%m-%d %H:%M} UTC in {result.batches} batches"
            + (" (batch cap reached: rows remain for the next run)" if result.capped else "")
        )
        context.add_output_metadata(
            {f"{result.table}/{k}": v for k, v in _metadata(result).items()}
        )


@dg.job(description="Delete expired invalid-row logs and provider calls in bounded batches.")
def invalid_log_retention_job():
    delete_expired_rows()


invalid_log_retention_schedule = utc_schedule(invalid_log_retention_job, "0 9 * * *")
