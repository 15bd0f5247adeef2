"""Migration 0009: `catalog_items` keeps half of each page free on PostgreSQL, so that the
next scrape of a source (an update of every item it lists) writes each new row version
on the same page as a heap-only tuple: no index entries, the old version pruned in place.
Measured through PostgreSQL's own counters, not assumed."""

from __future__ import annotations

import time

from alembic import command
from sqlalchemy import text

from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.engine import alembic_config, upgrade
from catalog_pipeline.ingest import ingest_object

ROWS = 3000


def _reloptions(engine) -> list[str]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                text("SELECT reloptions FROM pg_class WHERE relname = 'catalog_items'")
            ).scalar_one()
            or []
        )


def _update_counts(engine) -> tuple[int, int]:
    """(updates, HOT updates) of catalog_items; backends report them within a second."""
    with engine.connect() as connection:
        return tuple(
            connection.execute(
                text(
                    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables "
                    "WHERE relname = 'catalog_items'"
                )
            ).one()
        )


def _rescrape_counts(engine, bucket) -> tuple[int, int]:
    """Ingest a scrape, then the same source's next one (every item updated); the
    updates and HOT updates the second one made."""
    bucket.put("shop_2026-01-01T00-00-00.csv", sample_csv(ROWS, seed=5))
    bucket.put("shop_2026-01-02T00-00-00.csv", sample_csv(ROWS, seed=5))
    ingest_object(bucket, engine, "shop_2026-01-01T00-00-00.csv", 1 << 20)
    time.sleep(1.5)  # let the first file's counts arrive
    before = _update_counts(engine)
    summary, _ = ingest_object(bucket, engine, "shop_2026-01-02T00-00-00.csv", 1 << 20)
    assert summary.status == "completed"
    deadline = time.monotonic() + 15
    while True:
        after = _update_counts(engine)
        updates = after[0] - before[0]
        if updates >= summary.rows_valid * 0.9 or time.monotonic() > deadline:
            return updates, after[1] - before[1]
        time.sleep(0.25)


def test_a_rescrape_updates_items_in_place(postgres_engine, local_bucket):
    assert "fillfactor=50" in _reloptions(postgres_engine)
    updates, hot = _rescrape_counts(postgres_engine, local_bucket)
    assert updates > 0.9 * ROWS * 0.9  # every valid item of the next scrape was updated
    assert hot >= 0.95 * updates, (updates, hot)


def test_migration_0009_sets_and_resets_the_fillfactor(postgres_engine):
    command.downgrade(alembic_config(postgres_engine), "0008")
    assert not any(option.startswith("fillfactor") for option in _reloptions(postgres_engine))
    upgrade(postgres_engine)
    assert "fillfactor=50" in _reloptions(postgres_engine)
