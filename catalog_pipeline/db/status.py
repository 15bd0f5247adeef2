"""Read-only queries of `catalog-pipeline status`: what the files, the catalog and the
invalid-row log hold, the newest ingest of each object, and the files that failed.

Each function is one short read, cheap on a large catalog: counts and aggregates over
`source_files` (one row per object version), and bounded lists (`limit`), never a scan
that returns rows per item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, Table, func, select

from catalog_pipeline.db.tables import catalog_items, invalid_item_logs, source_files

FILE_STATUSES = ("completed", "rejected", "failed", "ingesting", "planned", "superseded")
OPEN_STATUSES = ("planned", "ingesting")

_files = source_files.c


@dataclass(frozen=True, slots=True)
class FileCounts:
    """Files (object versions) per status, every status present; and when the oldest file
    still open (planned or ingesting) was last touched, to tell a stuck ingest from a slow one."""

    by_status: dict[str, int]
    oldest_open_since: datetime | None


@dataclass(frozen=True, slots=True)
class PartitionIngest:
    """The newest recorded ingest of one object key: its version's status and run."""

    object_key: str
    status: str
    run_id: str | None
    updated_at: datetime
    reason: str | None  # why it failed or was rejected


@dataclass(frozen=True, slots=True)
class FailedFile:
    source_file_id: int
    object_key: str
    etag: str
    reason: str
    failed_chunks: tuple[int, ...]
    run_id: str | None
    failed_at: datetime


def file_counts(engine: Engine) -> FileCounts:
    counts = dict.fromkeys(FILE_STATUSES, 0)
    with engine.connect() as connection:
        for status, count in connection.execute(
            select(_files.status, func.count()).group_by(_files.status)
        ):
            counts[status] = int(count)
        oldest = connection.execute(
            select(func.min(_files.updated_at)).where(_files.status.in_(OPEN_STATUSES))
        ).scalar_one()
    return FileCounts(counts, oldest)


def row_count(engine: Engine, table: Table) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())


def catalog_item_count(engine: Engine) -> int:
    return row_count(engine, catalog_items)


def invalid_row_count(engine: Engine) -> int:
    return row_count(engine, invalid_item_logs)


@dataclass(frozen=True, slots=True)
class DelistingHold:
    object_key: str
    source: str
    reason: str


def delisting_state(engine: Engine, limit: int) -> tuple[int, list[DelistingHold]]:
    """Items delisted now, and the standing holds: full-snapshot files whose delisting was
    held and that are still their source's newest completed file (newest first)."""
    newer = source_files.alias("newer")
    with engine.connect() as connection:
        delisted = connection.execute(
            select(func.count()).where(catalog_items.c.delisted_at.is_not(None))
        ).scalar_one()
        rows = connection.execute(
            select(_files.object_key, _files.source, _files.delisting_held)
            .where(
                _files.delisting_held.is_not(None),
                _files.status == "completed",
                ~select(newer.c.id)
                .where(
                    newer.c.source == _files.source,
                    newer.c.status == "completed",
                    newer.c.observed_at > _files.observed_at,
                )
                .exists(),
            )
            .order_by(_files.observed_at.desc())
            .limit(limit)
        ).all()
    return int(delisted), [DelistingHold(*row) for row in rows]


def latest_ingests(engine: Engine, limit: int) -> tuple[int, list[PartitionIngest]]:
    """How many object keys have an ingest on record, and the newest ingest of the `limit`
    keys touched last (newest first)."""
    newest = select(func.max(_files.id).label("id")).group_by(_files.object_key).subquery("newest")
    query = (
        select(
            _files.object_key,
            _files.status,
            _files.run_id,
            _files.updated_at,
            func.coalesce(_files.error, _files.rejected_reason).label("reason"),
        )
        .join(newest, newest.c.id == _files.id)
        .order_by(_files.updated_at.desc(), _files.id.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        keys = connection.execute(select(func.count()).select_from(newest)).scalar_one()
        rows = connection.execute(query).all()
    return int(keys), [PartitionIngest(*row) for row in rows]


def failed_files(engine: Engine, limit: int) -> tuple[int, list[FailedFile]]:
    """How many files are `failed`, and the `limit` that failed last, with their reasons.

    A `failed` row is the current state of its version: a later success of the same version
    overwrites it and a newer version supersedes it, so every row listed still needs work.
    """
    failed = _files.status == "failed"
    query = (
        select(
            _files.id,
            _files.object_key,
            _files.etag,
            func.coalesce(_files.error, _files.rejected_reason).label("reason"),
            _files.failed_chunks,
            _files.run_id,
            _files.updated_at,
        )
        .where(failed)
        .order_by(_files.updated_at.desc(), _files.id.desc())
        .limit(limit)
    )
    with engine.connect() as connection:
        count = connection.execute(select(func.count()).where(failed)).scalar_one()
        rows = connection.execute(query).all()
    return int(count), [
        FailedFile(
            source_file_id=row.id,
            object_key=row.object_key,
            etag=row.etag,
            reason=row.reason or "no reason recorded",
            failed_chunks=tuple(json.loads(row.failed_chunks)) if row.failed_chunks else (),
            run_id=row.run_id,
            failed_at=row.updated_at,
        )
        for row in rows
    ]
