"""Schema drift, delisted items and price history (issue 29), on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io

import dagster as dg
from sqlalchemy import func, select

from catalog_pipeline.core.snapshots import SnapshotPolicy
from catalog_pipeline.db import history
from catalog_pipeline.db.tables import catalog_item_history, catalog_items, source_files
from catalog_pipeline.ingest import ingest_object
from catalog_pipeline.resources.catalog import IngestSettings
from tests.assets.test_catalog_ingest import run_partition
from tests.dagster_jobs import resources
from tests.helpers import dump
from tests.test_cli import cli, json_output

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


def materialized_metadata(result) -> dict:
    (materialization,) = [
        m
        for m in result.asset_materializations_for_node("catalog_ingest")
        if m.asset_key == dg.AssetKey("catalog_items")
    ]
    return {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}


def test_materialization_metadata_tells_header_changes_and_the_delisting(
    tmp_path, local_bucket, sqlite_engine
):
    """Through the Dagster job: the header, the columns kept as attributes, the change
    from the source's previous file, and the delisting (or its hold) are metadata."""
    res = resources(local_bucket.url, str(sqlite_engine.url), 4096)
    res["ingest_settings"] = IngestSettings(chunk_bytes=4096, full_snapshot_sources="shop")
    first = items(100)
    renamed = ["sku", "title", "url", "price_usd", "currency", "availability", "colour_shade"]
    second = [
        {
            **{
                ("title" if k == "name" else "price_usd" if k == "price" else k): v
                for k, v in row.items()
            },
            "colour_shade": "teal",
        }
        for sku, row in sorted(first.items())[:95]
    ]
    third = second[:40]
    keys = [
        "shop_2026-03-01T00-00-00.csv",
        "shop_2026-03-02T00-00-00.csv",
        "shop_2026-03-03T00-00-00.csv",
    ]
    local_bucket.put(keys[0], scrape(list(first.values())))
    local_bucket.put(keys[1], scrape(second, renamed))
    local_bucket.put(keys[2], scrape(third, renamed))
    with dg.instance_for_test() as instance:
        results = [run_partition(res, key, instance) for key in keys]
    assert all(result.success for result in results)
    one, two, three = (materialized_metadata(result) for result in results)
    assert one["header"] == HEADER and one["attribute_columns"] == []
    assert "header_changes" not in one  # the source's first file
    assert one["delisted_items"] == 0
    assert two["attribute_columns"] == ["colour_shade"]
    assert two["header_changed"] is True
    assert two["header_changes"] == {
        "previous_file": keys[0],
        "added": ["colour_shade"],
        "removed": [],
        "renamed": [["name", "name", "title"], ["price", "price", "price_usd"]],
    }
    assert two["delisted_items"] == 5 and "delisting_held" not in two
    assert three["header_changed"] is False
    assert three["delisted_items"] == 0
    assert "58%" in three["delisting_held"]
    with sqlite_engine.connect() as connection:
        attributes = connection.execute(
            select(catalog_items.c.attributes).where(catalog_items.c.sku == "SKU-00000")
        ).scalar_one()
    assert attributes == {"colour_shade": "teal"}


def test_cli_scenario_ingest_output_and_history(tmp_path):
    """The issue's scenario as a user runs it: `catalog-pipeline ingest` after each scrape,
    then `catalog-pipeline history SKU`."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    environment = {
        "CATALOG_BUCKET_URL": f"file://{bucket}",
        "CATALOG_DATABASE_URL": f"sqlite:///{tmp_path / 'catalog.sqlite'}",
        "CATALOG_FULL_SNAPSHOT_SOURCES": "acme, shop",
    }
    first = items(1000)
    second = {sku: dict(row) for sku, row in first.items() if not 100 <= int(sku[4:]) < 150}
    for sku in sorted(second)[500:520]:
        second[sku]["price"] = "999.00"
    third = dict(sorted(second.items())[:380])
    scrapes = [first, second, third]
    outputs = []
    for day, rows in enumerate(scrapes, start=1):
        (bucket / f"shop_2026-04-0{day}T00-00-00.csv").write_bytes(scrape(list(rows.values())))
        outputs.append(json_output(cli("ingest", "--json", env=environment)))
    files = {entry["object_key"]: entry for entry in outputs[-1]["files"]}
    assert [f["status"] for f in files.values()] == ["completed"] * 3
    assert [f["delisted_items"] for f in files.values()] == [0, 50, 0]
    held = files["shop_2026-04-03T00-00-00.csv"]["delisting_held"]
    assert held.startswith("delisting held: 570 of the 950 listed items of source 'shop' (60%)")
    text = cli("ingest", env=environment)
    assert text.returncode == 0 and "↳ delisting held: 570 of the 950" in text.stdout
    status = json_output(cli("status", "--json", env=environment))["delisting"]
    assert status["delisted_items"] == 50
    assert [hold["object_key"] for hold in status["holds"]] == ["shop_2026-04-03T00-00-00.csv"]
    assert status["holds"][0]["reason"] == held
    changed = sorted(second)[500]
    shown = json_output(cli("history", changed, "--json", env=environment))
    assert [row["changes"] for row in shown["history"]] == [
        [f"first listed at {float(first[changed]['price']):,.2f} USD, in_stock"],
        [f"price {float(first[changed]['price']):,.2f} USD → 999.00 USD"],
    ]
    gone = json_output(cli("history", "SKU-00120", "--json", env=environment))
    assert gone["item"]["delisted_at"].startswith("2026-04-02")
    assert [row["changes"] for row in gone["history"]][-1] == ["delisted"]
    missing = cli("history", "NO-SUCH-SKU", env=environment)
    assert missing.returncode == 1 and "no catalog item has SKU 'NO-SUCH-SKU'" in missing.stderr
    bad = cli("ingest", env={**environment, "CATALOG_DELIST_HOLD_PERCENT": "150"})
    assert bad.returncode == 2 and "CATALOG_DELIST_HOLD_PERCENT" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_an_item_whose_row_is_invalid_today_is_not_delisted(engine, local_bucket):
    first = items(20)
    second = {sku: dict(row) for sku, row in first.items() if sku != "SKU-00004"}
    second["SKU-00007"]["price"] = "twelve dollars"  # still listed, badly scraped
    ingest(local_bucket, engine, "shop_2026-05-01T00-00-00.csv", scrape(list(first.values())))
    summary = ingest(
        local_bucket, engine, "shop_2026-05-02T00-00-00.csv", scrape(list(second.values()))
    )
    assert (summary.rows_invalid, summary.delisted_items) == (1, 1)
    assert history.item_history(engine, "SKU-00004")[0]["delisted_at"] is not None
    kept, entries = history.item_history(engine, "SKU-00007")
    assert kept["delisted_at"] is None and kept["price"] == float(first["SKU-00007"]["price"])
    assert [entry.listed for entry in entries] == [True]
