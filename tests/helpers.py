"""Test helpers shared by several test modules."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, inspect, select, text

from catalog_pipeline.db.tables import ingest_leases, metadata, utcnow

# Bookkeeping that legitimately changes on a re-run (how often, by which run, when).
VOLATILE = {
    "source_files": {"updated_at", "verified_at", "run_id"},
    "source_chunks": {"updated_at", "attempts", "run_id", "seconds"},
}


def dump(engine: Engine, exclude: dict[str, set[str]] | None = None) -> dict[str, list[tuple]]:
    """Every row of every table, ordered, minus the excluded bookkeeping columns.

    Tables and columns a migration adds later are left out while the database is at an
    older revision, so migration tests can compare before and after."""
    exclude = VOLATILE if exclude is None else exclude
    out = {}
    inspector = inspect(engine)
    present = set(inspector.get_table_names())
    with engine.connect() as connection:
        for table in metadata.sorted_tables:
            if table.name not in present:
                continue
            stored = {column["name"] for column in inspector.get_columns(table.name)}
            skip = exclude.get(table.name, set())
            columns = [c for c in table.columns if c.name not in skip and c.name in stored]
            rows = connection.execute(select(*columns).order_by(*table.primary_key.columns))
            out[table.name] = [tuple(row) for row in rows]
    return out


def content_dump(engine: Engine) -> dict[str, list[tuple]]:
    """Catalog content that must match across databases and storage backends (no ids/times)."""
    from sqlalchemy import text

    queries = {
        "items": "SELECT sku, name, brand, category, description, price, currency, url, "
        "image_urls, availability, weight_grams, play_count, external_id, source, object_key, "
        "source_offset, content_hash FROM catalog_items ORDER BY sku",
        "invalid": "SELECT object_key, chunk_index, byte_offset, reasons, raw "
        "FROM invalid_item_logs ORDER BY object_key, byte_offset",
        "files": "SELECT object_key, status, rows_total, rows_valid, rows_invalid, "
        "verified_row_count FROM source_files ORDER BY object_key, id",
        "provenance": "SELECT i.sku, f.object_key, s.byte_offset FROM catalog_item_sources s "
        "JOIN catalog_items i ON i.id = s.item_id JOIN source_files f ON f.id = s.source_file_id "
        "ORDER BY i.sku, f.object_key",
    }
    with engine.connect() as connection:
        return {
            name: [tuple(row) for row in connection.execute(text(query))]
            for name, query in queries.items()
        }


def completed_chunks(database_url: str) -> int:
    """Chunks stored as completed so far (0 while the database cannot answer): for tests
    that act in the middle of an ingest running in another process."""
    from catalog_pipeline.db.engine import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                text("SELECT count(*) FROM source_chunks WHERE status = 'completed'")
            ).scalar_one()
    except Exception:
        return 0
    finally:
        engine.dispose()


def hold_ingest_lease(engine: Engine, object_key: str) -> None:
    """Another process holds the object's ingest lease (for an hour): every run of the
    object fails for real, at once, until the lease is deleted."""
    with engine.begin() as connection:
        connection.execute(
            ingest_leases.insert().values(
                object_key=object_key,
                run_id="another-run",
                acquired_at=utcnow(),
                expires_at=utcnow() + timedelta(hours=1),
            )
        )


def lose_chunk(engine: Engine, chunk_index: int, reason: str = "worker killed") -> int:
    """Leave what a run killed while writing `chunk_index` of the only file leaves: the
    chunk's items, provenance and invalid rows not written, the chunk and the file
    `failed`. Returns the file's id."""
    with engine.begin() as connection:
        file_id, start, end = connection.execute(
            text(
                "SELECT source_file_id, byte_start, byte_end FROM source_chunks "
                "WHERE chunk_index = :index"
            ),
            {"index": chunk_index},
        ).one()
        span = {"file": file_id, "start": start, "end": end}
        items = (
            "SELECT id FROM catalog_items WHERE source_file_id = :file "
            "AND source_offset >= :start AND source_offset < :end"
        )
        connection.execute(
            text(f"DELETE FROM catalog_item_sources WHERE item_id IN ({items})"), span
        )
        assert connection.execute(
            text(f"DELETE FROM catalog_items WHERE id IN ({items})"), span
        ).rowcount
        connection.execute(
            text(
                "DELETE FROM invalid_item_logs WHERE source_file_id = :file "
                "AND byte_offset >= :start AND byte_offset < :end"
            ),
            span,
        )
        connection.execute(
            text(
                "UPDATE source_chunks SET status = 'failed', rows = NULL, valid = NULL, "
                "invalid = NULL, error = :reason WHERE chunk_index = :index"
            ),
            {"reason": reason, "index": chunk_index},
        )
        connection.execute(
            text(
                "UPDATE source_files SET status = 'failed', error = :reason, "
                "failed_chunks = :chunks"
            ),
            {"reason": reason, "chunks": f"[{chunk_index}]"},
        )
    return file_id
