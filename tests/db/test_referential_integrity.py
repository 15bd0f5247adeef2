"""The bulk-written tables carry no foreign keys (migration 0003): their references must
hold by construction. Also: the migrated schema is exactly what `db/tables.py` declares,
and migrations 0003 and 0004 change a populated database without losing a row."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.engine import (
    MIGRATIONS,
    alembic_config,
    current_revision,
    make_engine,
    upgrade,
)
from catalog_pipeline.db.tables import metadata
from catalog_pipeline.ingest import ingest_object
from tests.helpers import dump

# (child table, column, parent table) of every reference migration 0003 stopped checking.
UNCHECKED = (
    ("catalog_items", "source_file_id", "source_files"),
    ("catalog_item_sources", "item_id", "catalog_items"),
    ("catalog_item_sources", "source_file_id", "source_files"),
    ("playcount_measurements", "item_id", "catalog_items"),
)


def _orphans(engine) -> dict[str, int]:
    counts = {}
    with engine.connect() as connection:
        for child, column, parent in UNCHECKED:
            counts[f"{child}.{column}"] = connection.execute(
                text(
                    f"SELECT count(*) FROM {child} c "
                    f"WHERE NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.id = c.{column})"
                )
            ).scalar_one()
    return counts


def _ingest_history(engine, bucket) -> None:
    """Several files sharing SKUs, small chunks, a re-run and an overwritten version."""
    first = "shop_2026-01-01T00-00-00.csv"
    keys = [first, "shop_2026-02-01T00-00-00.csv", "other_2026-01-15T00-00-00.csv"]
    for key, seed in zip(keys, (1, 1, 2), strict=True):
        bucket.put(key, sample_csv(600, seed=seed))
    for key in [*keys, first]:  # the last one is a re-run
        ingest_object(bucket, engine, key, 16 * 1024)
    bucket.put(first, sample_csv(400, seed=3))  # a new version supersedes the old one
    ingest_object(bucket, engine, first, 16 * 1024)


def test_every_unchecked_reference_points_at_a_row(engine, local_bucket):
    _ingest_history(engine, local_bucket)
    with engine.connect() as connection:
        counts = {
            child: connection.execute(text(f"SELECT count(*) FROM {child}")).scalar_one()
            for child in ("catalog_items", "catalog_item_sources", "playcount_measurements")
        }
    assert all(counts.values()), counts  # the check below looked at real rows
    assert _orphans(engine) == {f"{child}.{column}": 0 for child, column, _ in UNCHECKED}


def test_orphan_check_sees_a_dangling_reference(engine, local_bucket):
    """The check above can fail: a provenance row pointing at no item is counted."""
    _ingest_history(engine, local_bucket)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO catalog_item_sources (item_id, source_file_id, byte_offset, "
                "first_seen_at) VALUES (999999, 1, 0, CURRENT_TIMESTAMP)"
            )
        )
    assert _orphans(engine)["catalog_item_sources.item_id"] == 1


def test_migration_0005_adds_the_failure_ledgers_and_goes_back(engine, local_bucket):
    _ingest_history(engine, local_bucket)
    at_head = dump(engine, exclude={})
    assert at_head["ingest_run_failures"] == [] and at_head["repair_history"] == []
    command.downgrade(alembic_config(engine), "0004")
    tables = set(inspect(engine).get_table_names())
    assert not tables & {"ingest_run_failures", "ingest_leases", "derivation_failures"}
    assert "failed_chunks" not in {c["name"] for c in inspect(engine).get_columns("source_files")}
    upgrade(engine)
    assert _without_0007_history(dump(engine, exclude={})) == _without_0007_history(at_head)


def _without_0007_history(tables: dict) -> dict:
    """A downgrade past 0007 drops the item history and the SKUs of invalid rows, which the
    upgrade cannot rebuild (it seeds one history row per item, tested below); one past
    0010 drops `replaced_file_id`, which the upsert reads only as it sets it. Everything
    else must be equal."""
    tables = dict(tables)
    tables.pop("catalog_item_history")
    for table, column in (
        ("catalog_items", "replaced_file_id"),
        ("catalog_items", "history_file_id"),
        ("invalid_item_logs", "sku"),
    ):
        index = [c.name for c in metadata.tables[table].columns].index(column)
        tables[table] = [row[:index] + row[index + 1 :] for row in tables[table]]
    return tables


def test_migration_0007_seeds_one_history_row_per_item_and_goes_back(engine, local_bucket):
    _ingest_history(engine, local_bucket)
    command.downgrade(alembic_config(engine), "0006")
    assert "catalog_item_history" not in inspect(engine).get_table_names()
    columns = {c["name"] for c in inspect(engine).get_columns("catalog_items")}
    assert not columns & {"attributes", "delisted_at", "history_file_id"}
    upgrade(engine)
    with engine.connect() as connection:
        items = connection.execute(
            text(
                "SELECT id, source_file_id, observed_at, price, currency, availability, "
                "source_offset FROM catalog_items ORDER BY id"
            )
        ).all()
        history = connection.execute(
            text(
                "SELECT item_id, source_file_id, observed_at, price, currency, availability, "
                "byte_offset FROM catalog_item_history ORDER BY item_id"
            )
        ).all()
        unmarked = connection.execute(
            text(
                "SELECT count(*) FROM catalog_items WHERE history_file_id IS DISTINCT FROM source_file_id"
            )
            if engine.dialect.name == "postgresql"
            else text(
                "SELECT count(*) FROM catalog_items WHERE history_file_id IS NOT source_file_id"
            )
        ).scalar_one()
    assert items and [tuple(row) for row in history] == [tuple(row) for row in items]
    assert unmarked == 0


def test_migrated_schema_is_what_tables_py_declares(engine):
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def test_migration_0003_keeps_every_row_and_drops_only_its_keys(tmp_path, local_bucket):
    engine = make_engine(f"sqlite:///{tmp_path / 'old.sqlite'}")
    key = "shop_2026-01-01T00-00-00.csv"
    local_bucket.put(key, sample_csv(300, seed=4))
    # Rows written by today's code, then the schema taken back to before 0003.
    upgrade(engine)
    ingest_object(local_bucket, engine, key, 16 * 1024)
    command.downgrade(alembic_config(engine), "0002")
    before = dump(engine, exclude={})
    upgrade(engine, "0003")
    assert dump(engine, exclude={}) == before
    inspector = inspect(engine)
    for child, column, _ in UNCHECKED:
        assert column not in {
            name for fk in inspector.get_foreign_keys(child) for name in fk["constrained_columns"]
        }
    assert inspector.get_foreign_keys("invalid_item_logs")  # the others stay
    engine.dispose()


def test_sqlite_migration_refuses_broken_references_before_touching_anything(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'broken.sqlite'}")
    upgrade(engine, "0002")
    orphan = (
        "INSERT INTO invalid_item_logs (source_file_id, object_key, chunk_index, byte_offset, "
        "reasons, raw, created_at) VALUES (42, 'k', 0, 0, '[]', '', CURRENT_TIMESTAMP)"
    )
    with closing(sqlite3.connect(tmp_path / "broken.sqlite")) as raw:  # keys unchecked
        raw.execute(orphan)
        raw.commit()
    with pytest.raises(RuntimeError, match="point at rows that do not exist"):
        upgrade(engine)
    assert current_revision(engine) == "0002"
    with engine.begin() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        connection.exec_driver_sql("DELETE FROM invalid_item_logs")
    upgrade(engine)  # once fixed, the same database migrates
    assert current_revision(engine) == ScriptDirectory(str(MIGRATIONS)).get_current_head()
    engine.dispose()


def test_migration_0004_keeps_every_row_both_ways(engine, local_bucket):
    """Down to 0003 (surrogate ids numbered anew) and up again (natural keys as primary
    keys): every provenance and measurement row survives both, and the old schema still
    takes new rows without an id given."""
    _ingest_history(engine, local_bucket)
    command.downgrade(alembic_config(engine), "0004")  # what 0004 itself left
    before = dump(engine, exclude={})
    assert before["catalog_item_sources"] and before["playcount_measurements"]
    command.downgrade(alembic_config(engine), "0003")
    assert dump(engine, exclude={}) == before
    inspector = inspect(engine)
    for table in ("catalog_item_sources", "playcount_measurements"):
        assert inspector.get_pk_constraint(table)["constrained_columns"] == ["id"]
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO playcount_measurements (item_id, origin, measured_on, play_count, "
                "recorded_at) VALUES (1, 'provider', '2020-01-01', 5, CURRENT_TIMESTAMP)"
            )
        )
        ids = connection.execute(text("SELECT id FROM playcount_measurements")).scalars().all()
    assert sorted(ids) == list(range(1, len(before["playcount_measurements"]) + 2))
    upgrade(engine, "0004")
    after = dump(engine, exclude={})
    assert len(after["playcount_measurements"]) == len(before["playcount_measurements"]) + 1
    after["playcount_measurements"] = [
        row for row in after["playcount_measurements"] if row[1] != "provider"
    ]
    assert after == before
    inspector = inspect(engine)
    assert inspector.get_pk_constraint("catalog_item_sources")["constrained_columns"] == [
        "source_file_id",
        "item_id",
    ]
    assert inspector.get_pk_constraint("playcount_measurements")["constrained_columns"] == [
        "item_id",
        "origin",
        "measured_on",
    ]
    indexes = {index["name"] for index in inspector.get_indexes("catalog_items")}
    assert not indexes & {"ix_catalog_items_source", "ix_catalog_items_external_id"}
