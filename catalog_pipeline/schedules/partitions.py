"""`partition_retention_job`, daily at 09:30 UTC: keep the live `source_csvs` partitions
bounded by deleting those of objects the catalog has settled long ago.

Dagster advises at most about 100,000 partitions per asset (its UI and partition queries
slow down beyond); one partition per object crosses that within a year on a busy bucket.
A partition goes when its object's newest file in `source_files` is `completed`,
`superseded` or `rejected` and has not changed for `CATALOG_PARTITION_RETENTION_DAYS`
days (30), and no run of it is queued or running. A failed file keeps its partition until
it is replayed (and then its 30 days start). `source_files` stays the permanent record:
`status`, `repair` and supersession work on the object's rows as before, its history stays
in the event log, and a re-upload of the key (a new ETag) brings the partition back with
its run (`new_csv_objects_sensor` adds it).
"""

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dagster as dg
from sqlalchemy import Engine

from catalog_pipeline.assets.partitions import object_key_for, source_csvs
from catalog_pipeline.core.retry import retrying
from catalog_pipeline.db.partitions import (
    SETTLED_STATUSES,
    PartitionRetention,
    newest_versions,
    retention_days,
)
from catalog_pipeline.resources.catalog import CatalogDatabase
from catalog_pipeline.schedules import utc_schedule

DEFAULT_BATCH_SIZE = 1_000
DEFAULT_MAX_BATCHES = 100
PARTITION_TAG = "dagster/partition"
# Where the next run goes on (the instance's key-value store, as Dagster's daemons keep theirs).
CURSOR_KEY = "catalog_pipeline/partition_retention/cursor"
# A run of the partition that has not finished: its partition must stay.
UNFINISHED_RUN_STATUSES = [
    status
    for status in dg.DagsterRunStatus
    if status
    not in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
]


@dataclass(slots=True)
class PartitionRetentionResult:
    cutoff: datetime | None
    examined: int = 0
    deleted: int = 0
    batches: int = 0
    capped: bool = False  # True only when the batch cap stopped the run with partitions left
    held: str | None = None  # why nothing was deleted at all
    from_oldest: bool = True  # False: went on where the previous run stopped
    # Partitions kept, by reason: `recent`, `failed`, `ingesting` (planned or ingesting),
    # `run_in_flight`, `unrecorded` (no file row: a run not yet planned, or added by hand).
    kept: Counter = field(default_factory=Counter)


def retire_partitions(
    instance: dg.DagsterInstance,
    engine: Engine,
    retention: PartitionRetention,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batches: int = DEFAULT_MAX_BATCHES,
) -> PartitionRetentionResult:
    """Delete the retired `source_csvs` partitions, oldest first, `batch_size` at a time,
    at most `max_batches` batches: each batch reads its objects' newest files in one query
    per 500 keys and the batch's unfinished runs in one query, then deletes."""
    if batch_size < 1 or max_batches < 1:
        raise ValueError("batch_size and max_batches must be at least 1")
    result = PartitionRetentionResult(cutoff=retention.cutoff)
    if retention.cutoff is None:
        result.held = "partition retention is off (0 days)"
        return result
    if (backfill := _backfill_in_progress(instance)) is not None:
        # A backfill launches its partitions' runs over time: none of them may vanish first.
        result.held = f"backfill {backfill} is in progress: nothing is deleted until it ends"
        return result
    # Each run goes on after the last partition the previous run examined (the ones at
    # the front, kept for a reason, would otherwise fill every run's batches), and starts
    # again from the oldest once it has reached the newest.
    cursor = _saved_cursor(instance)
    result.from_oldest = cursor is None
    while result.batches < max_batches:
        page = instance.get_paginated_dynamic_partitions(
            source_csvs.name, limit=batch_size, ascending=True, cursor=cursor
        )
        if not page.results:
            if not result.from_oldest and not result.batches:  # the rest went meanwhile
                cursor, result.from_oldest = None, True
                continue
            break
        result.batches += 1
        result.examined += len(page.results)
        for partition in _retired(instance, engine, retention, page.results, result.kept):
            instance.delete_dynamic_partition(source_csvs.name, partition)
            result.deleted += 1
        cursor = page.cursor
        result.capped = page.has_more  # left for the next run if this was the last batch
        if not page.has_more:
            break
    _save_cursor(instance, cursor if result.capped else None)
    return result


def _retired(
    instance: dg.DagsterInstance,
    engine: Engine,
    retention: PartitionRetention,
    partitions: list[str],
    kept: Counter,
) -> list[str]:
    """The partitions of `partitions` that may go; the others are counted in `kept`."""
    by_object = {object_key_for(partition): partition for partition in partitions}
    newest = retrying(
        lambda: newest_versions(engine, list(by_object)), "catalog database: newest files"
    )
    settled = []
    for object_key, partition in by_object.items():
        state = newest.get(object_key)
        if state is None:
            kept["unrecorded"] += 1
        elif retention.retires(state):
            settled.append(partition)
        elif state.status in SETTLED_STATUSES:
            kept["recent"] += 1
        elif state.status == "failed":
            kept["failed"] += 1
        else:
            kept["ingesting"] += 1
    if not settled:
        return []
    # Asked last, right before the deletes, to keep the window for a run to start small.
    running = {
        run.tags.get(PARTITION_TAG)
        for run in instance.get_runs(
            dg.RunsFilter(tags={PARTITION_TAG: settled}, statuses=UNFINISHED_RUN_STATUSES)
        )
    }
    kept["run_in_flight"] += sum(1 for partition in settled if partition in running)
    return [partition for partition in settled if partition not in running]


def _saved_cursor(instance: dg.DagsterInstance) -> str | None:
    values = instance.run_storage.get_cursor_values({CURSOR_KEY})
    return values.get(CURSOR_KEY) or None


def _save_cursor(instance: dg.DagsterInstance, cursor: str | None) -> None:
    instance.run_storage.set_cursor_values({CURSOR_KEY: cursor or ""})


def _backfill_in_progress(instance: dg.DagsterInstance) -> str | None:
    """The id of a backfill still launching runs, if any."""
    from dagster._core.execution.backfill import BulkActionStatus

    backfills = instance.get_backfills(status=BulkActionStatus.REQUESTED, limit=1)
    return backfills[0].backfill_id if backfills else None


class PartitionRetentionConfig(dg.Config):
    # No `days`: CATALOG_PARTITION_RETENTION_DAYS is the one setting, read by the sensor too
    # (a partition deleted earlier than it says would be added back by the next sweep).
    batch_size: int = DEFAULT_BATCH_SIZE
    max_batches: int = DEFAULT_MAX_BATCHES


def _metadata(result: PartitionRetentionResult, days: int) -> dict:
    metadata: dict = {
        "deleted": result.deleted,
        "examined": result.examined,
        "batches": result.batches,
        "retention_days": days,
    }
    if result.cutoff is not None:
        metadata["cutoff"] = result.cutoff.isoformat()
    for reason, count in sorted(result.kept.items()):
        metadata[f"kept/{reason}"] = count
    if result.from_oldest and not result.capped and result.held is None:
        metadata["live_partitions"] = result.examined - result.deleted
    if result.capped:
        metadata["capped"] = True  # reported only when partitions remain unexamined
    if result.held:
        metadata["held"] = result.held
    return metadata


@dg.op
def delete_retired_partitions(
    context: dg.OpExecutionContext, config: PartitionRetentionConfig, catalog_db: CatalogDatabase
) -> None:
    """Delete the `source_csvs` partitions of files settled longer than the retention."""
    days = retention_days()
    retention = PartitionRetention.from_days(days, datetime.now(UTC))
    result = retire_partitions(
        context.instance, catalog_db.engine(), retention, config.batch_size, config.max_batches
    )
    if result.held:
        context.log.info(f"source_csvs: no partition deleted: {result.held}")
    else:
        kept = ", ".join(f"{count:,} {reason}" for reason, count in sorted(result.kept.items()))
        context.log.info(
            f"source_csvs: deleted {result.deleted:,} of {result.examined:,} partitions "
            f"(files settled before {result.cutoff:%Y-%m-%d %H:%M} UTC) in {result.batches} "
            f"batches; kept {kept or 'none'}"
            + (" (batch cap reached: partitions remain for the next run)" if result.capped else "")
        )
    context.add_output_metadata(_metadata(result, days))


@dg.job(
    description="Delete the `source_csvs` partitions of files completed, superseded or "
    "rejected more than CATALOG_PARTITION_RETENTION_DAYS (30) days ago, in bounded batches; "
    "never one with a run in flight or a failed file. `source_files` keeps their record."
)
def partition_retention_job():
    delete_retired_partitions()


partition_retention_schedule = utc_schedule(partition_retention_job, "30 9 * * *")
