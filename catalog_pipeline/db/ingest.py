"""Writes of the ingest run: plans, chunk results, catalog upserts, invalid-row logs.

Every function here is idempotent. A chunk's items, provenance, invalid logs and result
are written in one transaction, so a killed step leaves either all of it or none.

Upserts go through a temporary staging table: Postgres fills it with COPY, SQLite with
one executemany; then a single `INSERT … SELECT … ON CONFLICT (sku) DO UPDATE … WHERE`
applies the precedence rule. Every insert walks its rows in SKU order, so chunks of one
file that share SKUs and run at the same time lock those rows in the same order and wait
for each other instead of deadlocking. A row replaces the stored item only when its
(observed_at, object_key, source_file_id, source_offset) is greater. `source_file_id`
(an increasing id per object version) sits before the byte offset so that a new version
of a timestamped key wins over the old version even where its row moved to a lower offset.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    cast,
    func,
    literal,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB

from catalog_pipeline.core.chunking import ChunkPlan
from catalog_pipeline.core.ingest import ChunkOutcome, InvalidRecord
from catalog_pipeline.core.snapshots import SnapshotPolicy
from catalog_pipeline.db import history
from catalog_pipeline.db.binary_copy import copy_payload
from catalog_pipeline.db.engine import dialect_insert
from catalog_pipeline.db.failures import renew_lease
from catalog_pipeline.db.playcount import record_scrape_readings, scrape_readings_insert
from catalog_pipeline.db.tables import (
    UtcDateTime,
    catalog_item_sources,
    catalog_items,
    invalid_item_logs,
    source_chunks,
    source_files,
    utcnow,
)

# Columns that come from the chunk, in the order of `ChunkOutcome.items`; the rest of a
# catalog row (source, observed_at, object_key, source_file_id) is the file's.
STAGE_COLUMNS = (
    "sku",
    "name",
    "brand",
    "category",
    "description",
    "price",
    "currency",
    "url",
    "image_urls",
    "availability",
    "weight_grams",
    "play_count",
    "external_id",
    "source_offset",
    "attributes",
    "content_hash",
)
FILE_COLUMNS = ("source", "observed_at", "object_key", "source_file_id")
_STAGE_TYPES = {
    "price": Float,
    "weight_grams": Float,
    "play_count": BigInteger,
    "source_offset": BigInteger,
    "sku": String(200),
    "content_hash": String(64),
}


@dataclass(frozen=True, slots=True)
class SourceObject:
    """The version of an object being ingested, as HEAD reported it."""

    object_key: str
    etag: str
    size: int
    last_modified: datetime
    source: str
    observed_at: datetime


@dataclass(frozen=True, slots=True)
class FileSummary:
    source_file_id: int
    object_key: str
    etag: str
    status: str
    rows_total: int
    rows_valid: int
    rows_invalid: int
    verified_row_count: int | None
    rejected_reason: str | None
    chunks_total: int
    chunks_completed: int
    # A full-snapshot source's completed file: items it delisted, or why it held (None:
    # not a full-snapshot source, or not decided by this file).
    delisted_items: int | None = None
    delisting_held: str | None = None


def _upsert_file(connection: Connection, obj: SourceObject, values: dict) -> int:
    insert = dialect_insert(connection)
    row = {
        "object_key": obj.object_key,
        "etag": obj.etag,
        "source": obj.source,
        "observed_at": obj.observed_at,
        "last_modified": obj.last_modified,
        "size": obj.size,
        **values,
    }
    statement = (
        insert(source_files)
        .values(**row, created_at=utcnow(), updated_at=utcnow())
        .on_conflict_do_update(
            index_elements=["object_key", "etag"], set_={**values, "updated_at": utcnow()}
        )
        .returning(source_files.c.id)
    )
    file_id = connection.execute(statement).scalar_one()
    _supersede_older_versions(connection, obj.object_key, file_id)
    return file_id


def _supersede_older_versions(connection: Connection, object_key: str, file_id: int) -> None:
    connection.execute(
        update(source_files)
        .where(
            source_files.c.object_key == object_key,
            source_files.c.id < file_id,
            source_files.c.status != "superseded",
        )
        .values(status="superseded", superseded_by=file_id, updated_at=utcnow())
    )


def record_plan(
    engine: Engine, obj: SourceObject, plan: ChunkPlan, chunk_bytes: int, run_id: str | None
) -> int:
    """Store the plan of an object version (re-planning the same version replaces it)."""
    with engine.begin() as connection:
        file_id = _upsert_file(
            connection,
            obj,
            {
                "status": "ingesting",
                "rejected_reason": None,
                "error": None,
                "failed_chunks": None,
                "header": json.dumps(list(plan.header)),
                "data_start": plan.data_start,
                "chunk_bytes": chunk_bytes,
                "chunk_count": len(plan.chunks),
                "has_bom": plan.has_bom,
                "verified_row_count": plan.record_count,
                "verified_at": utcnow(),
                "run_id": run_id,
            },
        )
        insert = dialect_insert(connection)
        for chunk in plan.chunks:
            planned = {"byte_start": chunk.start, "byte_end": chunk.end}
            connection.execute(
                insert(source_chunks)
                .values(
                    source_file_id=file_id,
                    chunk_index=chunk.index,
                    status="planned",
                    attempts=0,
                    created_at=utcnow(),
                    updated_at=utcnow(),
                    **planned,
                )
                .on_conflict_do_update(
                    index_elements=["source_file_id", "chunk_index"],
                    # A re-plan of identical ranges keeps results; changed ranges reset them.
                    set_={**planned, "updated_at": utcnow()},
                )
            )
        connection.execute(
            source_chunks.delete().where(
                source_chunks.c.source_file_id == file_id,
                source_chunks.c.chunk_index >= len(plan.chunks),
            )
        )
    return file_id


def record_rejection(engine: Engine, obj: SourceObject, reason: str, run_id: str | None) -> int:
    """Store a whole-file rejection (empty object, unreadable header, missing columns)."""
    with engine.begin() as connection:
        return _upsert_file(
            connection,
            obj,
            {"status": "rejected", "rejected_reason": reason, "run_id": run_id},
        )


def write_chunk(
    engine: Engine,
    source_file_id: int,
    chunk_index: int,
    outcome: ChunkOutcome,
    run_id: str | None,
    seconds: float,
) -> None:
    """Upsert a chunk's valid items and their play counts (a `scrape` reading per item and
    scrape day), log its invalid rows, and record the chunk result."""
    items, invalid = outcome.items, outcome.invalid
    with engine.begin() as connection:
        file_row = connection.execute(
            select(
                source_files.c.object_key,
                source_files.c.source,
                source_files.c.observed_at,
            ).where(source_files.c.id == source_file_id)
        ).one()
        # Invalid rows first: the upsert's row locks (which a chunk of the same file
        # sharing SKUs waits for) are then held only until the commit that follows it.
        if invalid:
            _log_invalid(connection, file_row.object_key, source_file_id, chunk_index, invalid)
        if items.num_rows:
            _upsert_items(connection, file_row, source_file_id, items)
        renew_lease(connection, file_row.object_key)
        _record_attempt(
            connection,
            source_file_id,
            chunk_index,
            run_id,
            status="completed",
            rows=outcome.rows,
            valid=outcome.valid_rows,
            invalid=len(invalid),
            error=None,
            seconds=seconds,
        )


def mark_chunk_failed(
    engine: Engine, source_file_id: int, chunk_index: int, error: str, run_id: str | None
) -> None:
    with engine.begin() as connection:
        _record_attempt(
            connection, source_file_id, chunk_index, run_id, status="failed", error=error[:4000]
        )


def _record_attempt(
    connection: Connection, source_file_id: int, chunk_index: int, run_id: str | None, **values
) -> None:
    """One more attempt of a chunk, and its outcome (a retry overwrites the previous one)."""
    connection.execute(
        update(source_chunks)
        .where(
            source_chunks.c.source_file_id == source_file_id,
            source_chunks.c.chunk_index == chunk_index,
        )
        .values(
            **values,
            attempts=source_chunks.c.attempts + 1,
            run_id=run_id,
            updated_at=utcnow(),
        )
    )


def _stage_table(connection: Connection) -> Table:
    columns = [Column(name, _STAGE_TYPES.get(name, Text)) for name in STAGE_COLUMNS]
    return _temp_table(connection, "catalog_items_stage", columns)


def _temp_table(connection: Connection, name: str, columns: list[Column]) -> Table:
    """A temporary table for this transaction (Postgres drops it at commit; SQLite's is
    dropped and made anew)."""
    if connection.dialect.name == "postgresql":
        table = Table(
            name, MetaData(), *columns, prefixes=["TEMPORARY"], postgresql_on_commit="DROP"
        )
    else:
        table = Table(name, MetaData(), *columns, prefixes=["TEMPORARY"])
        table.drop(connection, checkfirst=True)
    table.create(connection)
    return table


def _fill_stage(connection: Connection, stage: Table, items: pa.Table) -> None:
    items = items.select(list(STAGE_COLUMNS))
    if connection.dialect.name == "postgresql":
        _copy_binary(connection, stage.name, items)
        return
    placeholders = ", ".join("?" for _ in STAGE_COLUMNS)
    rows = zip(*(column.to_pylist() for column in items.columns), strict=True)
    driver = connection.connection.driver_connection
    driver.executemany(f"INSERT INTO {stage.name} VALUES ({placeholders})", rows)


def _copy_binary(connection: Connection, table_name: str, rows: pa.Table) -> None:
    """Binary COPY of `rows` into `table_name` (its columns named as `rows`' are), built
    from the Arrow columns: the cheapest form for the server to read, and no Python object
    per value on this side."""
    columns = ", ".join(rows.column_names)  # our own table and column names, not data
    statement = f"COPY {table_name} ({columns}) FROM STDIN (FORMAT BINARY)"
    driver = connection.connection.driver_connection
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for piece in copy_payload(rows):
            copy.write(piece)


def _upsert_items(connection: Connection, file_row, source_file_id: int, items: pa.Table) -> None:
    """`items` hold one row per SKU in SKU order (see `ChunkOutcome`)."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET LOCAL work_mem = '64MB'")  # the lookup path's sorts
    stage = _stage_table(connection)
    _fill_stage(connection, stage, items)

    now = utcnow()
    insert = dialect_insert(connection)
    file_values = (
        literal(file_row.source, Text),
        literal(file_row.observed_at, UtcDateTime),
        literal(file_row.object_key, Text),
        literal(source_file_id, Integer),
    )
    # No ORDER BY: the stage was filled by one COPY in SKU order, and a sequential scan
    # of a fresh temporary table (never scanned in parallel or in sync with another
    # session) returns rows in the order they were written, so the insert takes its row
    # locks in SKU order without a sort. Sorting a chunk of full rows again spilled to
    # disk and cost about 5 µs a row (a fifth of the statement). Were the order ever
    # lost, the price is a deadlock PostgreSQL detects and the step's retry, never a
    # wrong row: precedence alone decides what is stored.
    staged_values = [stage.c[name] for name in STAGE_COLUMNS]
    if connection.dialect.name == "postgresql":
        position = STAGE_COLUMNS.index("attributes")
        staged_values[position] = cast(stage.c.attributes, JSONB)
    statement = insert(catalog_items).from_select(
        [*STAGE_COLUMNS, *FILE_COLUMNS, "history_file_id", "first_seen_at", "updated_at"],
        select(
            *staged_values,
            *file_values,
            literal(source_file_id, Integer),  # the first listing is history
            literal(now, UtcDateTime),
            literal(now, UtcDateTime),
        ).where(true()),
    )
    excluded = statement.excluded
    precedence = ("observed_at", "object_key", "source_file_id", "source_offset")
    statement = statement.on_conflict_do_update(
        index_elements=["sku"],
        set_={
            **{name: excluded[name] for name in (*STAGE_COLUMNS, *FILE_COLUMNS) if name != "sku"},
            "delisted_at": None,  # listed again
            "history_file_id": history.changed_file_id(excluded),
            "replaced_file_id": catalog_items.c.source_file_id,  # the stored row's file
            "updated_at": now,
        },
        where=tuple_(*(excluded[name] for name in precedence))
        > tuple_(*(catalog_items.c[name] for name in precedence)),
    )
    measured_on = file_row.observed_at.date()
    if connection.dialect.name == "postgresql":
        # One statement upserts the items and writes provenance and readings of every row
        # it inserted or updated, with the ids RETURNING gives (no lookup by SKU). Rows
        # that lost on precedence are not returned; only then does the lookup below run.
        # An item this statement inserted has a fresh id, so nothing can hold its
        # provenance or reading yet: those go in with a plain INSERT, which skips the
        # conflict check and the speculative-insertion lock of ON CONFLICT (2-3 µs a row
        # of server time, measured on a first ingest); only updated items need them.
        # "Inserted" means first_seen_at is this statement's `now` (an update keeps the
        # stored one); were another chunk ever to store the very same microsecond, the
        # plain INSERT would fail on the key and the step retry, never write a wrong row.
        # Provenance and history are keyed by (item, file), so an updated item needs ON
        # CONFLICT there only when the record it replaced came from this very file (an
        # earlier chunk or record of it): stored precedence only grows, so a file that
        # beats a record of another file never lost on that item before and cannot have
        # written either row. That is a re-scrape's common case (every item updated).
        # Readings are keyed by day, which another file of the same day shares.
        inserted = catalog_items.c.first_seen_at.is_not_distinct_from(literal(now, UtcDateTime))
        same_file = catalog_items.c.replaced_file_id.is_not_distinct_from(source_file_id)
        upserted = statement.returning(
            *(catalog_items.c[name] for name in history.RETURNED),
            catalog_items.c.history_file_id,
            catalog_items.c.play_count,
            inserted.label("inserted"),
            same_file.label("same_file"),  # false for an inserted item (NULL there)
        ).cte("upserted")
        # RETURNING gives rows in the order they were inserted (SKU order): no sort.
        same_file, inserted = upserted.c.same_file, upserted.c.inserted
        writes = []
        for by_file, by_day, may_conflict in (
            (~same_file, inserted, False),
            (same_file, ~inserted, True),
        ):
            options = {"ordered": False, "may_conflict": may_conflict}
            writes += [
                _provenance_insert(
                    connection, upserted, source_file_id, now, where=by_file, **options
                ),
                scrape_readings_insert(
                    connection, upserted, measured_on, now, where=by_day, **options
                ),
                history.changes_insert(connection, upserted, now, where=by_file, **options),
            ]
        query = select(func.count()).select_from(upserted)
        for number, write in enumerate(writes):
            query = query.add_cte(write.cte(f"write_{number}"))
        returned = connection.execute(query).scalar_one()
        if returned == items.num_rows:
            return
        # Provenance and readings look each staged SKU up in catalog_items. Left alone,
        # the planner hashes the whole catalog for every chunk (a cost that grows with
        # the catalog); a chunk is small next to it, so index lookups are always cheaper.
        connection.exec_driver_sql("SET LOCAL enable_hashjoin = off")
        connection.exec_driver_sql("SET LOCAL enable_mergejoin = off")
    else:
        connection.execute(statement)
    staged = (
        select(catalog_items.c.id, stage.c.sku, stage.c.source_offset)
        .where(catalog_items.c.sku == stage.c.sku)
        .subquery()
    )
    connection.execute(_provenance_insert(connection, staged, source_file_id, now))
    record_scrape_readings(connection, stage, measured_on, now)
    if connection.dialect.name == "sqlite":  # PostgreSQL's RETURNING path wrote history
        history.record_changes(connection, stage, source_file_id, now)
        stage.drop(connection)


def _provenance_insert(
    connection: Connection,
    items,
    source_file_id: int,
    now,
    ordered: bool = True,
    where=None,
    may_conflict: bool = True,
):
    """Provenance of `items` (`id, sku, source_offset`) in this file, in SKU order (sorted
    here unless `ordered` is False because `items` already come in that order), for the
    rows matching `where` (default: all). `may_conflict=False` (items inserted by this
    very statement) writes without ON CONFLICT.

    A SKU twice in one file: provenance points at its last record (the one precedence
    keeps), whichever chunk happens to finish first.
    """
    rows = select(
        items.c.id,
        literal(source_file_id, Integer),
        items.c.source_offset,
        literal(now, UtcDateTime),
    )
    if where is not None:
        rows = rows.where(where)
    provenance = dialect_insert(connection)(catalog_item_sources).from_select(
        ["item_id", "source_file_id", "byte_offset", "first_seen_at"],
        rows.order_by(items.c.sku) if ordered else rows,
    )
    if not may_conflict:
        return provenance
    return provenance.on_conflict_do_update(
        index_elements=["source_file_id", "item_id"],
        set_={"byte_offset": provenance.excluded.byte_offset},
        where=provenance.excluded.byte_offset > catalog_item_sources.c.byte_offset,
    )


def _log_invalid(
    connection: Connection,
    object_key: str,
    source_file_id: int,
    chunk_index: int,
    invalid: Sequence[InvalidRecord],
) -> None:
    """One statement for the chunk's invalid rows (a statement per row cost a round trip
    each); a retry adds nothing (ON CONFLICT on the file and byte offset)."""
    now = utcnow()
    offsets = [row.byte_offset for row in invalid]
    reasons = [json.dumps(list(row.reasons)) for row in invalid]
    skus = [row.sku for row in invalid]
    # Undecodable bytes and NULs (which no Postgres text holds) are logged as escapes.
    raws = [
        row.raw.decode("utf-8", errors="backslashreplace").replace("\x00", "\\x00")
        for row in invalid
    ]
    table = invalid_item_logs.name
    columns = "source_file_id, object_key, chunk_index, byte_offset, reasons, raw, sku, created_at"
    conflict = "ON CONFLICT (source_file_id, byte_offset) DO NOTHING"
    driver = connection.connection.driver_connection
    if connection.dialect.name == "postgresql":
        # Raw rows are long: sent as text arrays they cost about 24 µs each to escape in
        # Python (half of their whole cost); a binary COPY from Arrow columns does not.
        stage = _temp_table(
            connection,
            "invalid_item_logs_stage",
            [
                Column("byte_offset", BigInteger),
                Column("reasons", Text),
                Column("raw", Text),
                Column("sku", Text),
            ],
        )
        rows = pa.table(
            {
                "byte_offset": pa.array(offsets, pa.int64()),
                "reasons": pa.array(reasons, pa.string()),
                "raw": pa.array(raws, pa.string()),
                "sku": pa.array(skus, pa.string()),
            }
        )
        _copy_binary(connection, stage.name, rows)
        driver.execute(
            f"INSERT INTO {table} ({columns}) "
            f"SELECT %s, %s, %s, byte_offset, reasons, raw, sku, %s FROM {stage.name} {conflict}",
            (source_file_id, object_key, chunk_index, now),
        )
        return
    created_at = UtcDateTime().process_bind_param(now, connection.dialect)
    driver.executemany(
        f"INSERT INTO {table} ({columns}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) {conflict}",
        [
            (source_file_id, object_key, chunk_index, offset, reason, raw, sku, created_at)
            for offset, reason, raw, sku in zip(offsets, reasons, raws, skus, strict=True)
        ],
    )


def finalize_file(
    engine: Engine, source_file_id: int, snapshot: SnapshotPolicy | None = None
) -> FileSummary:
    """Sum the stored chunk results into the file row; completed only if every chunk is.

    A completed file of a source `snapshot` declares full-snapshot delists, in the same
    transaction, the items of its source it no longer lists (see `history.apply_snapshot`).
    """
    with engine.begin() as connection:
        totals = connection.execute(
            select(
                func.count(),
                func.coalesce(func.sum(source_chunks.c.rows), 0),
                func.coalesce(func.sum(source_chunks.c.valid), 0),
                func.coalesce(func.sum(source_chunks.c.invalid), 0),
                func.count().filter(source_chunks.c.status == "completed"),
            ).where(source_chunks.c.source_file_id == source_file_id)
        ).one()
        chunks_total, rows, valid, invalid, completed = (int(v) for v in totals)
        status = "completed" if completed == chunks_total else "failed"
        connection.execute(
            update(source_files)
            .where(and_(source_files.c.id == source_file_id, source_files.c.status != "superseded"))
            .values(
                status=status,
                rows_total=rows,
                rows_valid=valid,
                rows_invalid=invalid,
                **({"error": None, "failed_chunks": None} if status == "completed" else {}),
                updated_at=utcnow(),
            )
        )
        if snapshot is not None and status == "completed":
            history.apply_snapshot(connection, source_file_id, snapshot)
        return load_summary(connection, source_file_id, chunks_total, completed)


def load_summary(
    connection: Connection,
    source_file_id: int,
    chunks_total: int | None = None,
    chunks_completed: int | None = None,
) -> FileSummary:
    summary_columns = [
        "id",
        "object_key",
        "etag",
        "status",
        "rows_total",
        "rows_valid",
        "rows_invalid",
        "verified_row_count",
        "rejected_reason",
        "delisted_items",
        "delisting_held",
    ]
    row = connection.execute(
        select(*(source_files.c[name] for name in summary_columns)).where(
            source_files.c.id == source_file_id
        )
    ).one()
    if chunks_total is None:
        counts = connection.execute(
            select(func.count(), func.count().filter(source_chunks.c.status == "completed")).where(
                source_chunks.c.source_file_id == source_file_id
            )
        ).one()
        chunks_total, chunks_completed = int(counts[0]), int(counts[1])
    return FileSummary(
        source_file_id=row.id,
        object_key=row.object_key,
        etag=row.etag,
        status=row.status,
        rows_total=row.rows_total or 0,
        rows_valid=row.rows_valid or 0,
        rows_invalid=row.rows_invalid or 0,
        verified_row_count=row.verified_row_count,
        rejected_reason=row.rejected_reason,
        chunks_total=chunks_total,
        chunks_completed=chunks_completed or 0,
        delisted_items=row.delisted_items,
        delisting_held=row.delisting_held,
    )


@dataclass(frozen=True, slots=True)
class ChunkResult:
    chunk_index: int
    byte_start: int
    byte_end: int
    status: str
    rows: int
    valid: int
    invalid: int
    attempts: int
    seconds: float | None
    error: str | None


def load_chunk_results(engine: Engine, source_file_id: int) -> list[ChunkResult]:
    """The stored plan and result of every chunk of one object version, in order."""
    columns = [getattr(source_chunks.c, name) for name in ChunkResult.__slots__]
    with engine.connect() as connection:
        rows = connection.execute(
            select(*columns)
            .where(source_chunks.c.source_file_id == source_file_id)
            .order_by(source_chunks.c.chunk_index)
        ).all()
    return [
        ChunkResult(
            **{**row._asdict(), **{k: row._mapping[k] or 0 for k in ("rows", "valid", "invalid")}}
        )
        for row in rows
    ]


def known_versions(engine: Engine, object_keys: Sequence[str]) -> set[tuple[str, str]]:
    """The (object_key, etag) pairs of `object_keys` already recorded in `source_files`."""
    found: set[tuple[str, str]] = set()
    keys = list(dict.fromkeys(object_keys))
    with engine.connect() as connection:
        for start in range(0, len(keys), 500):
            batch = keys[start : start + 500]
            found.update(
                (row.object_key, row.etag)
                for row in connection.execute(
                    select(source_files.c.object_key, source_files.c.etag).where(
                        source_files.c.object_key.in_(batch)
                    )
                )
            )
    return found


def latest_summary(engine: Engine, object_key: str, etag: str | None = None) -> FileSummary | None:
    """The summary of `object_key` at `etag` (default: its newest recorded version)."""
    query = select(source_files.c.id).where(source_files.c.object_key == object_key)
    if etag is not None:
        query = query.where(source_files.c.etag == etag)
    with engine.connect() as connection:
        file_id = connection.execute(
            query.order_by(source_files.c.id.desc()).limit(1)
        ).scalar_one_or_none()
        return None if file_id is None else load_summary(connection, file_id)


def previous_header(engine: Engine, source_file_id: int) -> tuple[str, list[str]] | None:
    """The object key and header of the file of the same source planned before this one
    (by scrape time, then id), or None for a source's first file."""
    this = source_files.alias("this")
    with engine.connect() as connection:
        row = connection.execute(
            select(source_files.c.object_key, source_files.c.header)
            .join(this, this.c.id == source_file_id)
            .where(
                source_files.c.source == this.c.source,
                source_files.c.header.is_not(None),
                tuple_(source_files.c.observed_at, source_files.c.id)
                < tuple_(this.c.observed_at, this.c.id),
            )
            .order_by(source_files.c.observed_at.desc(), source_files.c.id.desc())
            .limit(1)
        ).one_or_none()
    return None if row is None else (row.object_key, json.loads(row.header))
