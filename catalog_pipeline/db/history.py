"""Price, availability and listing history of catalog items, and delisting.

`catalog_items.history_file_id` names the file that last changed an item's tracked state
(price, currency, availability, listed). The upsert sets it: to its own file on insert (the
first listing), and on update to its file only when a tracked value differs from the
stored one or the item was delisted; else it keeps the old id. The rows the upsert wrote
whose `history_file_id` is their own `source_file_id` are then exactly the changes, and
each becomes one `catalog_item_history` row, without a second look at the stored items.

Delisting (a full-snapshot source's item absent from a newer completed file) happens when
the file is finalized, in the same transaction, unless it would take more than the
policy's share of the source's listed items at once: then it is held, with the reason on
the file row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Boolean,
    Connection,
    Engine,
    and_,
    case,
    func,
    literal,
    null,
    or_,
    select,
    update,
)

from catalog_pipeline.core.snapshots import SnapshotPolicy
from catalog_pipeline.db.engine import dialect_insert
from catalog_pipeline.db.tables import (
    UtcDateTime,
    catalog_item_history,
    catalog_items,
    invalid_item_logs,
    source_files,
    utcnow,
)

TRACKED = ("price", "currency", "availability")
# The upsert's RETURNING columns that history needs (and provenance: id, sku, offset).
RETURNED = ("id", "sku", "source_offset", "source_file_id", "observed_at", *TRACKED)
HISTORY_COLUMNS = (
    "item_id",
    "source_file_id",
    "observed_at",
    *TRACKED,
    "listed",
    "byte_offset",
    "recorded_at",
)


def changed_file_id(excluded):
    """The upsert's new `history_file_id` of an updated item: the incoming row's file when
    a tracked value changes or the item comes back from a delisting, else the stored one."""
    stored = catalog_items.c
    changed = or_(
        *(stored[name].is_distinct_from(excluded[name]) for name in TRACKED),
        stored.delisted_at.is_not(None),
    )
    return case((changed, excluded.source_file_id), else_=stored.history_file_id)


def changes_insert(
    connection: Connection,
    items,
    now: datetime,
    ordered: bool = True,
    where=None,
    may_conflict: bool = True,
):
    """History rows of the upserted `items` (a selectable with `RETURNED` columns and
    `history_file_id`) whose tracked state this file changed, in SKU order unless
    `ordered` is False (already in it). A SKU twice in one file: the row keeps the later
    record's values, as the item does."""
    rows = select(
        items.c.id,
        items.c.source_file_id,
        items.c.observed_at,
        *(items.c[name] for name in TRACKED),
        literal(True, Boolean),
        items.c.source_offset,
        literal(now, UtcDateTime),
    ).where(items.c.history_file_id == items.c.source_file_id)
    if where is not None:
        rows = rows.where(where)
    statement = dialect_insert(connection)(catalog_item_history).from_select(
        list(HISTORY_COLUMNS), rows.order_by(items.c.sku) if ordered else rows
    )
    if not may_conflict:
        return statement
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=["item_id", "source_file_id"],
        set_={name: excluded[name] for name in (*TRACKED, "byte_offset", "recorded_at")},
        where=excluded.byte_offset > catalog_item_history.c.byte_offset,
    )


def record_changes(connection: Connection, stage, source_file_id: int, now: datetime) -> None:
    """History rows of the staged items this file's upsert changed (the path without
    RETURNING): the items that now hold a staged record and name this file as their
    last change. A re-run finds the same rows and changes nothing."""
    items = (
        select(
            *(catalog_items.c[name] for name in RETURNED),
            catalog_items.c.history_file_id,
        )
        .where(
            catalog_items.c.sku == stage.c.sku,
            catalog_items.c.source_file_id == source_file_id,
            catalog_items.c.source_offset == stage.c.source_offset,
            catalog_items.c.history_file_id == source_file_id,
        )
        .subquery()
    )
    connection.execute(changes_insert(connection, items, now))


@dataclass(frozen=True, slots=True)
class Delisting:
    """What finalizing a completed file of a full-snapshot source did to its items."""

    delisted: int
    held: str | None = None


def apply_snapshot(
    connection: Connection, source_file_id: int, policy: SnapshotPolicy
) -> Delisting | None:
    """Delist the items of the file's source that this completed file no longer lists
    (items of the source last seen in an older file), unless that is more than
    `policy.hold_share` of the source's listed items: then hold, recording why.

    None when the policy does not cover the source, the file is not completed, or a newer
    completed file of the source exists (it decided). Idempotent: a second call finds
    nothing left to delist and returns what the first stored.
    """
    file = connection.execute(
        select(
            source_files.c.source,
            source_files.c.observed_at,
            source_files.c.status,
            source_files.c.delisted_items,
            source_files.c.delisting_held,
        ).where(source_files.c.id == source_file_id)
    ).one()
    if file.status != "completed" or not policy.applies_to(file.source):
        return None
    newer = connection.execute(
        select(func.count()).where(
            source_files.c.source == file.source,
            source_files.c.status == "completed",
            source_files.c.observed_at > file.observed_at,
        )
    ).scalar_one()
    if newer:
        return None
    of_source = and_(catalog_items.c.source == file.source, catalog_items.c.delisted_at.is_(None))
    # Last seen in an older file, and not in this one as an invalid row either (the
    # source still lists an item whose row it got wrong today).
    invalid_here = select(invalid_item_logs.c.sku).where(
        invalid_item_logs.c.source_file_id == source_file_id,
        invalid_item_logs.c.sku.is_not(None),
    )
    absent = and_(
        catalog_items.c.observed_at < file.observed_at,
        catalog_items.c.sku.not_in(invalid_here),
    )
    listed, missing = connection.execute(
        select(func.count(), func.count().filter(absent)).where(of_source)
    ).one()
    if not missing:
        if file.delisted_items is None and file.delisting_held is None:
            _record(connection, source_file_id, 0, None)
        return Delisting(file.delisted_items or 0, file.delisting_held)
    share = missing / listed
    if share > policy.hold_share:
        reason = (
            f"delisting held: {missing:,} of the {listed:,} listed items of source "
            f"{file.source!r} ({share:.0%}) are missing from this file, more than the "
            f"{policy.hold_share:.0%} one file may delist (CATALOG_DELIST_HOLD_PERCENT); nothing "
            "was delisted. A partial or broken scrape? If the items are really gone, "
            "ingest this file again with a higher limit, or let the next full scrape decide."
        )
        _record(connection, source_file_id, 0, reason)
        return Delisting(0, reason)
    now = utcnow()
    connection.execute(
        update(catalog_items)
        .where(of_source, absent)
        .values(delisted_at=file.observed_at, history_file_id=source_file_id, updated_at=now)
    )
    delisted = select(
        catalog_items.c.id,
        literal(source_file_id),
        literal(file.observed_at, UtcDateTime),
        *(catalog_items.c[name] for name in TRACKED),
        literal(False, Boolean),
        null(),
        literal(now, UtcDateTime),
    ).where(
        catalog_items.c.source == file.source,
        catalog_items.c.history_file_id == source_file_id,
        catalog_items.c.delisted_at.is_not(None),
    )
    connection.execute(
        dialect_insert(connection)(catalog_item_history)
        .from_select(list(HISTORY_COLUMNS), delisted)
        .on_conflict_do_nothing()
    )
    _record(connection, source_file_id, missing, None)
    return Delisting(missing, None)


def _record(connection: Connection, source_file_id: int, delisted: int, held: str | None) -> None:
    connection.execute(
        update(source_files)
        .where(source_files.c.id == source_file_id)
        .values(delisted_items=delisted, delisting_held=held)
    )


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    observed_at: datetime
    price: float | None
    currency: str | None
    availability: str | None
    listed: bool
    object_key: str
    byte_offset: int | None


def item_history(engine: Engine, sku: str) -> tuple[dict | None, list[HistoryEntry]]:
    """The item (its current row, or None for an unknown SKU) and its history, oldest first."""
    with engine.connect() as connection:
        item = (
            connection.execute(
                select(
                    catalog_items.c.id,
                    catalog_items.c.sku,
                    catalog_items.c.name,
                    catalog_items.c.source,
                    *(catalog_items.c[name] for name in TRACKED),
                    catalog_items.c.observed_at,
                    catalog_items.c.delisted_at,
                ).where(catalog_items.c.sku == sku)
            )
            .mappings()
            .one_or_none()
        )
        if item is None:
            return None, []
        rows = connection.execute(
            select(
                catalog_item_history.c.observed_at,
                *(catalog_item_history.c[name] for name in TRACKED),
                catalog_item_history.c.listed,
                source_files.c.object_key,
                catalog_item_history.c.byte_offset,
            )
            .join(source_files, source_files.c.id == catalog_item_history.c.source_file_id)
            .where(catalog_item_history.c.item_id == item["id"])
            .order_by(catalog_item_history.c.observed_at, catalog_item_history.c.source_file_id)
        ).all()
    return dict(item), [HistoryEntry(**row._mapping) for row in rows]
