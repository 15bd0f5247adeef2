"""Schema drift, delisted items and price history (issue 29), on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io

from sqlalchemy import func, select

from catalog_pipeline.core.snapshots import SnapshotPolicy
from catalog_pipeline.db import history
from catalog_pipeline.db.tables import catalog_item_history, catalog_items, source_files
from catalog_pipeline.ingest import ingest_object
from tests.helpers import dump

SHOP = SnapshotPolicy.parse("shop")
HEADER = ["sku", "name", "url", "price", "currency", "availability"]


def scrape(rows: list[dict], header: list[str] = HEADER) -> bytes:
    out = io.StringIO()
    writer = csv.DictWriter(out, header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


def items(count: int, price=lambda i: f"{10 + i % 90}.50") -> dict[str, dict]:
    return {
        f"SKU-{i:05d}": {
            "sku": f"SKU-{i:05d}",
            "name": f"Item {i}",
            "url": f"https://shop.example.com/p/{i}",
            "price": price(i),
            "currency": "USD",
            "availability": "in_stock",
        }
        for i in range(count)
    }


def ingest(bucket, engine, key, data, snapshot=SHOP, chunk_bytes=16 * 1024):
    bucket.put(key, data)
    summary, _ = ingest_object(bucket, engine, key, chunk_bytes, snapshot=snapshot)
    return summary


def count(engine, query) -> int:
    with engine.connect() as connection:
        return connection.execute(query).scalar_one()


def delisted(engine) -> int:
    return count(
        engine,
        select(func.count())
        .select_from(catalog_items)
        .where(catalog_items.c.delisted_at.is_not(None)),
    )


def history_rows(engine, **where) -> int:
    query = select(func.count()).select_from(catalog_item_history)
    for column, value in where.items():
        query = query.where(catalog_item_history.c[column] == value)
    return count(engine, query)


def test_full_snapshot_scenario_delists_records_history_and_holds(engine, local_bucket):
    """The issue's scenario: 1,000 items; then 50 gone and 20 price changes; then 60 %
    missing: held, nothing delisted, with the reason on the file."""
    first = items(1000)
    summary = ingest(
        local_bucket, engine, "shop_2026-01-01T00-00-00.csv", scrape(list(first.values()))
    )
    assert (summary.status, summary.rows_valid, summary.delisted_items) == ("completed", 1000, 0)
    assert history_rows(engine) == 1000  # the first prices

    second = {sku: dict(row) for sku, row in first.items()}
    gone = sorted(second)[100:150]
    for sku in gone:
        del second[sku]
    changed = sorted(second)[500:520]
    for sku in changed:
        second[sku]["price"] = "999.00"
    summary = ingest(
        local_bucket, engine, "shop_2026-01-02T00-00-00.csv", scrape(list(second.values()))
    )
    assert (summary.status, summary.delisted_items, summary.delisting_held) == (
        "completed",
        50,
        None,
    )
    assert delisted(engine) == 50
    assert history_rows(engine, listed=True) == 1000 + 20
    assert history_rows(engine, listed=False) == 50
    entry_item, entries = history.item_history(engine, changed[0])
    assert [e.price for e in entries] == [float(first[changed[0]]["price"]), 999.0]
    assert entry_item["delisted_at"] is None
    gone_item, gone_entries = history.item_history(engine, gone[0])
    assert gone_item["delisted_at"] is not None
    assert [e.listed for e in gone_entries] == [True, False]

    before = dump(engine)
    third = dict(sorted(second.items())[: int(len(second) * 0.4)])  # 60 % missing
    summary = ingest(
        local_bucket, engine, "shop_2026-01-03T00-00-00.csv", scrape(list(third.values()))
    )
    assert summary.status == "completed"
    assert summary.delisted_items == 0
    assert "delisting held" in summary.delisting_held
    assert "60%" in summary.delisting_held and "30%" in summary.delisting_held
    assert delisted(engine) == 50
    assert history_rows(engine, listed=False) == 50
    with engine.connect() as connection:
        held = connection.execute(
            select(source_files.c.delisting_held).where(
                source_files.c.object_key == "shop_2026-01-03T00-00-00.csv"
            )
        ).scalar_one()
    assert held == summary.delisting_held
    # Only observed_at/updated_at of the listed items moved; no history for unchanged rows.
    assert len(dump(engine)["catalog_item_history"]) == len(before["catalog_item_history"])


def test_relisted_item_comes_back_with_a_history_row(engine, local_bucket):
    first = items(10)
    ingest(local_bucket, engine, "shop_2026-01-01T00-00-00.csv", scrape(list(first.values())))
    without = {k: v for k, v in first.items() if k != "SKU-00003"}
    ingest(local_bucket, engine, "shop_2026-01-02T00-00-00.csv", scrape(list(without.values())))
    assert delisted(engine) == 1
    ingest(local_bucket, engine, "shop_2026-01-03T00-00-00.csv", scrape(list(first.values())))
    assert delisted(engine) == 0
    _, entries = history.item_history(engine, "SKU-00003")
    assert [e.listed for e in entries] == [True, False, True]
    assert [e.object_key for e in entries][-1] == "shop_2026-01-03T00-00-00.csv"


def test_no_delisting_without_the_policy_or_from_an_older_or_failed_file(engine, local_bucket):
    first = items(10)
    half = dict(sorted(first.items())[:8])
    # Not a full-snapshot source: nothing is ever delisted.
    ingest(local_bucket, engine, "acme_2026-01-01T00-00-00.csv", scrape(list(first.values())), SHOP)
    summary = ingest(
        local_bucket, engine, "acme_2026-01-02T00-00-00.csv", scrape(list(half.values())), SHOP
    )
    assert summary.delisted_items is None and delisted(engine) == 0
    # An older scrape ingested after a newer one (a backfill) decides nothing.
    ingest(local_bucket, engine, "shop_2026-02-02T00-00-00.csv", scrape(list(first.values())))
    summary = ingest(
        local_bucket, engine, "shop_2026-02-01T00-00-00.csv", scrape(list(half.values()))
    )
    assert summary.delisted_items is None and delisted(engine) == 0


def test_reingesting_changes_nothing(engine, local_bucket):
    """Every write is idempotent: the same files again leave every table as it was."""
    first = items(30)
    second = dict(sorted(first.items())[:28])
    second["SKU-00001"] = {**second["SKU-00001"], "price": "1.00", "availability": "sold_out"}
    ingest(local_bucket, engine, "shop_2026-01-01T00-00-00.csv", scrape(list(first.values())))
    ingest(local_bucket, engine, "shop_2026-01-02T00-00-00.csv", scrape(list(second.values())))
    before = dump(
        engine,
        exclude={
            "catalog_items": {"updated_at"},
            "source_files": {"updated_at", "verified_at", "run_id"},
        },
    )
    summary, _ = ingest_object(
        local_bucket, engine, "shop_2026-01-02T00-00-00.csv", 16 * 1024, snapshot=SHOP
    )
    ingest_object(local_bucket, engine, "shop_2026-01-01T00-00-00.csv", 16 * 1024, snapshot=SHOP)
    assert summary.delisted_items == 2
    after = dump(
        engine,
        exclude={
            "catalog_items": {"updated_at"},
            "source_files": {"updated_at", "verified_at", "run_id"},
        },
    )
    assert after["catalog_item_history"] == before["catalog_item_history"]
    assert after["catalog_items"] == before["catalog_items"]
    assert history_rows(engine) == 30 + 1 + 2  # first listings, one change, two delistings


def test_extra_columns_are_kept_as_attributes_for_every_valid_item(engine, local_bucket):
    header = ["sku", "title", "url", "price_usd", "colour_shade", "Pack Size"]
    rows = [
        {
            "sku": f"C-{i:04d}",
            "title": f"Paint {i}",
            "url": f"https://paint.example.com/{i}",
            "price_usd": "4.99",
            "colour_shade": f"shade “{i}” \\ 蓝" if i % 7 == 0 else f"shade-{i}",
            "Pack Size": "" if i % 5 == 0 else str(i % 3 + 1),
        }
        for i in range(400)
    ]
    rows[13]["url"] = "ftp://paint.example.com/13"  # one invalid row in the middle
    summary = ingest(local_bucket, engine, "paint.csv", scrape(rows, header), chunk_bytes=4096)
    assert (summary.rows_valid, summary.rows_invalid) == (399, 1)
    with engine.connect() as connection:
        stored = {
            row.sku: (row.name, row.price, row.attributes)
            for row in connection.execute(
                select(
                    catalog_items.c.sku,
                    catalog_items.c.name,
                    catalog_items.c.price,
                    catalog_items.c.attributes,
                )
            )
        }
    assert len(stored) == 399
    for i, row in enumerate(rows):
        if i == 13:
            continue
        expected = {"colour_shade": row["colour_shade"]}
        if row["Pack Size"]:
            expected["Pack Size"] = row["Pack Size"]
        assert stored[row["sku"]] == (row["title"], 4.99, expected), row["sku"]
