"""What the catalog knows about object versions, in batches: the sensor's comparison of a
listed page against `source_files`, and the rule that retires a `source_csvs` partition.

`source_files` is the permanent record of every object version; a Dagster partition is
only the UI's handle on an object. A partition may go once its object's newest version
is settled (`completed`, `superseded` or `rejected`) and has not changed for
`CATALOG_PARTITION_RETENTION_DAYS` days; a `failed`, `planned` or `ingesting` file keeps
it, whatever its age.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select

from catalog_pipeline import settings
from catalog_pipeline.db.tables import source_files

RETENTION_DAYS_SETTING = settings.PARTITION_RETENTION_DAYS
DEFAULT_RETENTION_DAYS = 30
SETTLED_STATUSES = ("completed", "superseded", "rejected")
BATCH_SIZE = 500  # keys per `IN (…)`: well under every driver's bound-parameter limit


@dataclass(frozen=True, slots=True)
class VersionState:
    """An object version's row in `source_files`: its status and when it last changed."""

    status: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class PartitionRetention:
    """Which settled versions no longer need a live partition: those last changed before
    `cutoff`. `cutoff` None is retention turned off (nothing is ever retired)."""

    cutoff: datetime | None

    @classmethod
    def from_days(cls, days: int, now: datetime) -> PartitionRetention:
        return cls(None if days <= 0 else now - timedelta(days=days))

    def retires(self, state: VersionState) -> bool:
        return (
            self.cutoff is not None
            and state.status in SETTLED_STATUSES
            and state.updated_at < self.cutoff
        )


def retention_days() -> int:
    """`CATALOG_PARTITION_RETENTION_DAYS` (default 30; 0 turns partition retention off)."""
    return settings.number_setting(
        RETENTION_DAYS_SETTING,
        DEFAULT_RETENTION_DAYS,
        int,
        "give a whole number of days (0 turns it off)",
        (lambda days: days >= 0, "days cannot be negative"),
    )


def _batches(keys: Sequence[str], size: int = BATCH_SIZE):
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), size):
        yield unique[start : start + size]


def version_states(
    engine: Engine, object_keys: Sequence[str]
) -> dict[tuple[str, str], VersionState]:
    """Every recorded version of `object_keys`: (object_key, etag) → its state. One query
    per 500 keys (the unique (object_key, etag) index answers it)."""
    found: dict[tuple[str, str], VersionState] = {}
    columns = (
        source_files.c.object_key,
        source_files.c.etag,
        source_files.c.status,
        source_files.c.updated_at,
    )
    with engine.connect() as connection:
        for batch in _batches(object_keys):
            for row in connection.execute(
                select(*columns).where(source_files.c.object_key.in_(batch))
            ):
                found[(row.object_key, row.etag)] = VersionState(row.status, row.updated_at)
    return found


def newest_versions(engine: Engine, object_keys: Sequence[str]) -> dict[str, VersionState]:
    """The newest recorded version (highest id) of each of `object_keys` that has one."""
    found: dict[str, VersionState] = {}
    with engine.connect() as connection:
        for batch in _batches(object_keys):
            newest = (
                select(func.max(source_files.c.id))
                .where(source_files.c.object_key.in_(batch))
                .group_by(source_files.c.object_key)
            )
            for row in connection.execute(
                select(
                    source_files.c.object_key, source_files.c.status, source_files.c.updated_at
                ).where(source_files.c.id.in_(newest))
            ):
                found[row.object_key] = VersionState(row.status, row.updated_at)
    return found


def recorded_versions(engine: Engine) -> int:
    """How many object versions `source_files` records."""
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(source_files)) or 0


def key_splits(engine: Engine, after: str, every: int, limit: int) -> list[str]:
    """Up to `limit` recorded object keys after `after`, `every` recorded versions apart:
    where the sensor cuts the bucket's key space into lanes it lists side by side.

    Only the balance of the lanes depends on them: the keys come in the database's
    collation, which need not be S3's byte order, so the caller orders them itself. One
    index scan of `limit × every` entries at most."""
    numbered = (
        select(
            source_files.c.object_key,
            func.row_number().over(order_by=source_files.c.object_key).label("n"),
        )
        .where(source_files.c.object_key > after)
        .subquery()
    )
    query = (
        select(numbered.c.object_key)
        .where(numbered.c.n % every == 0)
        .order_by(numbered.c.n)
        .limit(limit)
    )
    with engine.connect() as connection:
        return list(connection.scalars(query))
