"""Failure as state: a run that ended without completing its file leaves the file `failed`
(with the reason and the chunks that did not complete), once per run, and never touches
a newer run's state. Also the lease that keeps one ingest per object key at a time."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, or_, select, update

from catalog_pipeline.core.errors import PermanentError
from catalog_pipeline.core.processes import process_alive
from catalog_pipeline.core.retry import RetryPolicy
from catalog_pipeline.db.engine import dialect_insert
from catalog_pipeline.db.tables import (
    ingest_leases,
    ingest_run_failures,
    source_chunks,
    source_files,
    utcnow,
)

if TYPE_CHECKING:  # db.ingest imports this module (the lease renewal of a chunk write)
    from catalog_pipeline.db.ingest import SourceObject

# States a run may still move to `failed`: its own plan or ingest, or an earlier failure
# of the same run family (a re-execution from failure that fails again).
OPEN_STATES = ("planned", "ingesting", "failed")
MAX_REASON = 4000


@dataclass(frozen=True, slots=True)
class RecordedFailure:
    """What `record_run_failure` did: `new` is False when this run was recorded before
    (so its alert has gone out, or is going out, already)."""

    new: bool
    source_file_id: int | None
    failed_chunks: tuple[int, ...]
    file_marked: bool


def record_run_failure(
    engine: Engine,
    run_id: str,
    run_family: Sequence[str],
    object_key: str,
    reason: str,
    etag: str | None = None,
    unplanned: SourceObject | None = None,
) -> RecordedFailure:
    """Mark the file of a failed (or cancelled, or killed) run `failed`, in one transaction.

    The file row is the one this run family (`run_family`: the run, its parent and root
    when it re-executes an earlier one) planned, and only while it is still open: a newer
    run that has re-planned the object, or completed it, is never overwritten. A run that
    failed before it stored a plan records `unplanned` as a `failed` row, unless that
    version already has a row. Idempotent: a second call for the same run changes nothing
    and returns `new=False`.
    """
    reason = reason[:MAX_REASON]
    family = list(dict.fromkeys([run_id, *run_family]))
    now = utcnow()
    with engine.begin() as connection:
        file_id = connection.execute(
            select(source_files.c.id)
            .where(
                source_files.c.object_key == object_key,
                source_files.c.run_id.in_(family),
                source_files.c.status.in_(OPEN_STATES),
            )
            .order_by(source_files.c.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        failed_chunks: tuple[int, ...] = ()
        marked = False
        if file_id is not None:
            failed_chunks = incomplete_chunks(connection, file_id)
            marked = (
                connection.execute(
                    update(source_files)
                    .where(
                        source_files.c.id == file_id,
                        source_files.c.run_id.in_(family),
                        source_files.c.status.in_(OPEN_STATES),
                    )
                    .values(
                        status="failed",
                        error=reason,
                        failed_chunks=json.dumps(list(failed_chunks)),
                        updated_at=now,
                    )
                ).rowcount
                == 1
            )
        elif unplanned is not None:
            file_id = _record_unplanned(connection, unplanned, reason, run_id, now)
            marked = file_id is not None
        insert = dialect_insert(connection)
        # RETURNING, not rowcount: psycopg reports no count for ON CONFLICT DO NOTHING.
        new = (
            connection.execute(
                insert(ingest_run_failures)
                .values(
                    run_id=run_id,
                    object_key=object_key,
                    etag=etag or (unplanned.etag if unplanned else None),
                    source_file_id=file_id,
                    reason=reason,
                    failed_at=now,
                )
                .on_conflict_do_nothing(index_elements=["run_id"])
                .returning(ingest_run_failures.c.run_id)
            ).scalar_one_or_none()
            is not None
        )
        connection.execute(
            ingest_leases.delete().where(
                ingest_leases.c.object_key == object_key, ingest_leases.c.run_id.in_(family)
            )
        )
    return RecordedFailure(new, file_id, failed_chunks, marked)


def adopt_file(engine: Engine, file_id: int, run_id: str, run_family: Sequence[str]) -> bool:
    """The file row, planned by an earlier run of `run_family`, now belongs to `run_id`
    and reads `ingesting` again (a no-op when it already does)."""
    with engine.begin() as connection:
        return (
            connection.execute(
                update(source_files)
                .where(
                    source_files.c.id == file_id,
                    source_files.c.run_id != run_id,
                    source_files.c.run_id.in_(list(run_family)),
                    source_files.c.status.in_(OPEN_STATES),
                )
                .values(run_id=run_id, status="ingesting", error=None, updated_at=utcnow())
            ).rowcount
            == 1
        )


def incomplete_chunks(connection: Connection, file_id: int) -> tuple[int, ...]:
    """The planned chunks of a file that have no completed result, in order."""
    return tuple(
        connection.execute(
            select(source_chunks.c.chunk_index)
            .where(source_chunks.c.source_file_id == file_id, source_chunks.c.status != "completed")
            .order_by(source_chunks.c.chunk_index)
        ).scalars()
    )


def _record_unplanned(
    connection: Connection, obj: SourceObject, reason: str, run_id: str, now: datetime
) -> int | None:
    insert = dialect_insert(connection)
    inserted = connection.execute(
        insert(source_files)
        .values(
            object_key=obj.object_key,
            etag=obj.etag,
            source=obj.source,
            observed_at=obj.observed_at,
            last_modified=obj.last_modified,
            size=obj.size,
            status="failed",
            error=reason,
            failed_chunks="[]",
            run_id=run_id,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["object_key", "etag"])
        .returning(source_files.c.id)
    ).scalar_one_or_none()
    return inserted


def mark_alerted(engine: Engine, run_id: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            update(ingest_run_failures)
            .where(ingest_run_failures.c.run_id == run_id)
            .values(alerted_at=utcnow())
        )


@dataclass(frozen=True, slots=True)
class PendingAlert:
    run_id: str
    object_key: str
    reason: str
    failed_chunks: tuple[int, ...]


def pending_alerts(engine: Engine, within: timedelta, limit: int) -> list[PendingAlert]:
    """Recorded failures of the last `within` whose alert has not gone out, oldest first."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                ingest_run_failures.c.run_id,
                ingest_run_failures.c.object_key,
                ingest_run_failures.c.reason,
                source_files.c.failed_chunks,
            )
            .select_from(
                ingest_run_failures.outerjoin(
                    source_files, source_files.c.id == ingest_run_failures.c.source_file_id
                )
            )
            .where(
                ingest_run_failures.c.alerted_at.is_(None),
                ingest_run_failures.c.failed_at >= utcnow() - within,
            )
            .order_by(ingest_run_failures.c.failed_at)
            .limit(limit)
        ).all()
    return [
        PendingAlert(
            row.run_id, row.object_key, row.reason, tuple(json.loads(row.failed_chunks or "[]"))
        )
        for row in rows
    ]


@dataclass(frozen=True, slots=True)
class OpenFile:
    """A file row still `planned`/`ingesting`, and the state of its run's lease."""

    source_file_id: int
    object_key: str
    etag: str
    run_id: str | None
    lease_run_id: str | None
    lease_expires_at: datetime | None

    def lease_lost(self, now: datetime) -> bool:
        """Nobody holds the object's lease for this file's run any more."""
        return (
            self.lease_run_id is None
            or self.lease_run_id != self.run_id
            or (self.lease_expires_at is not None and self.lease_expires_at <= now)
        )


def open_files(engine: Engine, untouched_for: timedelta, limit: int) -> list[OpenFile]:
    """Files still `planned`/`ingesting` whose row has not changed for `untouched_for`."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                source_files.c.id,
                source_files.c.object_key,
                source_files.c.etag,
                source_files.c.run_id,
                ingest_leases.c.run_id.label("lease_run_id"),
                ingest_leases.c.expires_at,
            )
            .select_from(
                source_files.outerjoin(
                    ingest_leases, ingest_leases.c.object_key == source_files.c.object_key
                )
            )
            .where(
                source_files.c.status.in_(("planned", "ingesting")),
                source_files.c.updated_at <= utcnow() - untouched_for,
            )
            .order_by(source_files.c.id)
            .limit(limit)
        ).all()
    return [
        OpenFile(row.id, row.object_key, row.etag, row.run_id, row.lease_run_id, row.expires_at)
        for row in rows
    ]


class LeaseHeldError(PermanentError):
    """Raised by `acquire_lease` when another live run holds the object's lease."""

    def __init__(self, object_key: str, holder: str, since: datetime, expires: datetime) -> None:
        super().__init__(
            f"{object_key}: already being ingested by run {holder} (since "
            f"{since:%Y-%m-%d %H:%M:%S} UTC); this run stops so that the two do not race. "
            f"If that run is dead, its lease expires at {expires:%H:%M:%S} UTC"
        )
        self.object_key = object_key
        self.holder = holder
        self.since = since
        self.expires = expires

    def __reduce__(self):
        return type(self), (self.object_key, self.holder, self.since, self.expires)


def acquire_lease(
    engine: Engine,
    object_key: str,
    run_id: str,
    holder_alive: Callable[[str], bool | None] | None = None,
    seconds: float | None = None,
) -> None:
    """Take the object's ingest lease for `run_id`, or raise `LeaseHeldError`.

    A lease is free when nobody holds it, when its holder is this run, when it expired,
    or when its holder has ended: as `holder_alive(holder)` says (Dagster's run state),
    or, for a run Dagster does not know (`None`: an in-process run of another instance),
    when it was taken on this host by a process that no longer exists. Each take is one
    conditional upsert, so two runs racing for a free lease cannot both win."""
    seconds = lease_seconds() if seconds is None else seconds
    for _ in range(3):  # the holder may release between the take and the look
        with engine.begin() as connection:
            if _take_lease(connection, object_key, run_id, seconds):
                return
            held = connection.execute(
                select(
                    ingest_leases.c.run_id,
                    ingest_leases.c.acquired_at,
                    ingest_leases.c.expires_at,
                    ingest_leases.c.holder_host,
                    ingest_leases.c.holder_pid,
                ).where(ingest_leases.c.object_key == object_key)
            ).one_or_none()
            if held is None:
                continue
            alive = holder_alive(held.run_id) if holder_alive else None
            if alive is None and held.holder_host == socket.gethostname() and held.holder_pid:
                alive = process_alive(held.holder_pid)
            if alive is False and _take_lease(
                connection, object_key, run_id, seconds, replacing=held.run_id
            ):
                return
            raise LeaseHeldError(object_key, held.run_id, held.acquired_at, held.expires_at)
    raise LeaseHeldError(object_key, "(unknown)", utcnow(), utcnow())


def _take_lease(
    connection: Connection, object_key: str, run_id: str, seconds: float, replacing: str = ""
) -> bool:
    now = utcnow()
    values = {
        "run_id": run_id,
        "acquired_at": now,
        "expires_at": now + timedelta(seconds=seconds),
        "holder_host": socket.gethostname(),
        "holder_pid": os.getpid(),
    }
    free = or_(
        ingest_leases.c.run_id == run_id,
        ingest_leases.c.run_id == replacing,
        ingest_leases.c.expires_at <= now,
    )
    insert = dialect_insert(connection)
    taken = connection.execute(
        insert(ingest_leases)
        .values(object_key=object_key, **values)
        .on_conflict_do_update(index_elements=["object_key"], set_=values, where=free)
        .returning(ingest_leases.c.run_id)
    ).scalar_one_or_none()
    return taken == run_id


def lease_seconds() -> float:
    """How long an ingest lease outlives its last renewal (each chunk write renews it): the
    retry budget (a step may wait that long for the database) plus five minutes."""
    return RetryPolicy.from_environment().budget_seconds + 300


def renew_lease(connection: Connection, object_key: str) -> None:
    """Push the lease's expiry forward (a chunk write does, in its own transaction)."""
    connection.execute(
        update(ingest_leases)
        .where(ingest_leases.c.object_key == object_key)
        .values(expires_at=utcnow() + timedelta(seconds=lease_seconds()))
    )


def release_lease(engine: Engine, object_key: str, run_ids: Sequence[str]) -> None:
    with engine.begin() as connection:
        connection.execute(
            ingest_leases.delete().where(
                ingest_leases.c.object_key == object_key, ingest_leases.c.run_id.in_(list(run_ids))
            )
        )
