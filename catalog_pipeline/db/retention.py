"""Retention: delete expired rows in small batches, each in its own short transaction.

A batch deletes by primary key from a bounded subquery, so Postgres holds row locks on at
most `batch_size` rows at a time (never a table lock), and rows that another transaction
holds are skipped (`SKIP LOCKED`) rather than waited on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Column, Engine, Table, delete, exists, func, select

from catalog_pipeline.db.tables import invalid_item_logs, provider_calls, step_outputs

DEFAULT_BATCH_SIZE = 10_000
DEFAULT_MAX_BATCHES = 100


@dataclass(frozen=True, slots=True)
class RetentionResult:
    table: str
    cutoff: datetime
    deleted: int
    batches: int
    capped: bool  # True only when the batch cap stopped the run with expired rows left


def delete_expired(
    engine: Engine,
    table: Table,
    timestamp: Column,
    cutoff: datetime,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batches: int = DEFAULT_MAX_BATCHES,
) -> RetentionResult:
    """Delete rows of `table` whose `timestamp` is before `cutoff`, batch by batch."""
    if batch_size < 1 or max_batches < 1:
        raise ValueError("batch_size and max_batches must be at least 1")
    expired = timestamp < cutoff
    deleted = batches = 0
    while batches < max_batches:
        with engine.begin() as connection:
            ids = select(table.c.id).where(expired).order_by(table.c.id).limit(batch_size)
            if connection.dialect.name == "postgresql":
                ids = ids.with_for_update(skip_locked=True)
            count = connection.execute(delete(table).where(table.c.id.in_(ids))).rowcount
        if count == 0:
            break
        deleted += count
        batches += 1
        if count < batch_size:
            break
    capped = False
    if batches == max_batches:
        with engine.connect() as connection:
            capped = bool(connection.execute(select(exists().where(expired))).scalar())
    return RetentionResult(table.name, cutoff, deleted, batches, capped)


def delete_expired_invalid_logs(engine: Engine, cutoff: datetime, **limits) -> RetentionResult:
    return delete_expired(
        engine, invalid_item_logs, invalid_item_logs.c.created_at, cutoff, **limits
    )


def delete_expired_provider_calls(engine: Engine, cutoff: datetime, **limits) -> RetentionResult:
    return delete_expired(engine, provider_calls, provider_calls.c.called_at, cutoff, **limits)


def delete_expired_step_outputs(engine: Engine, cutoff: datetime, **limits) -> RetentionResult:
    """Outputs of runs on Celery workers (`CatalogIOManager`): kept for re-executions from
    failure, which read their parent run's."""
    return delete_expired(engine, step_outputs, step_outputs.c.created_at, cutoff, **limits)


def count_expired(engine: Engine, table: Table, timestamp: Column, cutoff: datetime) -> int:
    """Rows of `table` whose `timestamp` is before `cutoff`: what `delete_expired` would
    delete, read without deleting (a dry run)."""
    with engine.connect() as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(table).where(timestamp < cutoff)
            ).scalar_one()
        )


def count_expired_invalid_logs(engine: Engine, cutoff: datetime) -> int:
    return count_expired(engine, invalid_item_logs, invalid_item_logs.c.created_at, cutoff)


def count_expired_provider_calls(engine: Engine, cutoff: datetime) -> int:
    return count_expired(engine, provider_calls, provider_calls.c.called_at, cutoff)
