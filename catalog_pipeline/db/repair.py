"""What `catalog-pipeline repair` reads and writes: the version of an object key that was
last ingested, and `repair_history`, one row per repair attempt (refused ones too)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, insert, select

from catalog_pipeline.db.failures import MAX_REASON
from catalog_pipeline.db.tables import repair_history, source_files, utcnow

# The states of a version whose ingest ran to an end. `planned`/`ingesting` (a run under
# way, or one whose end is not reconciled yet) and `superseded` say nothing about what
# was last ingested.
INGESTED_STATES = ("completed", "failed", "rejected")


@dataclass(frozen=True, slots=True)
class IngestedVersion:
    """The newest version of an object key whose ingest ran to an end."""

    source_file_id: int
    etag: str
    status: str


@dataclass(frozen=True, slots=True)
class RepairRecord:
    """One row of `repair_history`. `outcome` is `completed`, `rejected`,
    `failed: <reason>` or `refused: <reason>`."""

    object_key: str
    source_file_id: int | None
    ingested_etag: str | None
    current_etag: str | None
    forced: bool
    requested_by: str
    outcome: str
    run_id: str | None = None
    requested_at: datetime | None = None


def last_ingested_version(engine: Engine, object_key: str) -> IngestedVersion | None:
    """The newest `source_files` row of `object_key` that was ingested (completed, failed
    or rejected), or None when the key was never ingested."""
    query = (
        select(source_files.c.id, source_files.c.etag, source_files.c.status)
        .where(
            source_files.c.object_key == object_key,
            source_files.c.status.in_(INGESTED_STATES),
        )
        .order_by(source_files.c.id.desc())
        .limit(1)
    )
    with engine.connect() as connection:
        row = connection.execute(query).one_or_none()
    return None if row is None else IngestedVersion(row.id, row.etag, row.status)


def record_repair(engine: Engine, record: RepairRecord) -> int:
    """Append one attempt to `repair_history`; returns its id."""
    values = {
        "object_key": record.object_key,
        "source_file_id": record.source_file_id,
        "ingested_etag": record.ingested_etag,
        "current_etag": record.current_etag,
        "forced": record.forced,
        "requested_by": record.requested_by,
        "requested_at": record.requested_at or utcnow(),
        "outcome": record.outcome[:MAX_REASON],
        "run_id": record.run_id,
    }
    with engine.begin() as connection:
        result = connection.execute(insert(repair_history).values(**values))
        return int(result.inserted_primary_key[0])


def repairs_of(engine: Engine, object_key: str) -> list[RepairRecord]:
    """The repair attempts of `object_key`, oldest first."""
    columns = [repair_history.c[name] for name in RepairRecord.__slots__]
    with engine.connect() as connection:
        rows = connection.execute(
            select(*columns)
            .where(repair_history.c.object_key == object_key)
            .order_by(repair_history.c.id)
        ).all()
    return [RepairRecord(**row._asdict()) for row in rows]
