"""`catalog_quality` on a crafted catalog (ingested through the real core path) on SQLite and
Postgres: each flag exactly where expected, none on a clean catalog; schedule and automation."""

from __future__ import annotations

import base64
import csv
import io
from datetime import UTC, datetime, timedelta

import dagster as dg

from catalog_pipeline.assets.ingest import CATALOG_ITEMS
from catalog_pipeline.assets.partitions import source_csvs
from catalog_pipeline.assets.quality import CATALOG_QUALITY, catalog_quality
from catalog_pipeline.core.quality import CHECKS
from catalog_pipeline.definitions import build_definitions
from catalog_pipeline.ingest import ingest_object
from catalog_pipeline.resources.catalog import CatalogDatabase
from catalog_pipeline.schedules.quality import catalog_quality_schedule

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
HEADER = [
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
    "weight",
]


def good_row(source: str, index: int, price: str = "49.90") -> dict[str, str]:
    return {
        "sku": f"{source}-{index:03d}",
        "name": f"Trail tent {index}",
        "brand": "Fjord",
        "category": "outdoor/tents",
        "description": "A light two-person tent.",
        "price": price,
        "currency": "EUR",
        "url": f"https://{source}.example.com/p/{index}",
        "image_urls": f"https://img.example.com/{index}.jpg",
        "availability": "in_stock",
        "weight": "1.2 kg",
    }


def rows(source: str, count: int = 10, **changes: dict[int, dict[str, str]]) -> list[dict]:
    """`count` good rows, then per-row changes: rows(s, changed={3: {"brand": ""}})."""
    out = [good_row(source, index) for index in range(count)]
    for index, values in changes.get("changed", {}).items():
        out[index].update(values)
    return out


def csv_bytes(records: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue().encode("utf-8")


def key(source: str, days_ago: float = 1) -> str:
    return f"scrapes/{source}_{NOW - timedelta(days=days_ago):%Y-%m-%dT%H-%M-%S}.csv"


def crafted_catalog() -> tuple[list[tuple[str, bytes]], dict[str, list[str]]]:
    """Objects to ingest, and the flags each source must get (sources not listed: none)."""
    blank = {"brand": ""}
    objects = [
        (key("clean"), csv_bytes(rows("clean"))),
        # 1.299 read for 1,299: 2 of 10 prices under 10 with three decimals.
        (
            key("decimals"),
            csv_bytes(rows("decimals", changed={0: {"price": "1.299"}, 1: {"price": "2.499"}})),
        ),
        # Two decimals under 10 is just a cheap item, not the bug.
        (key("cheapish"), csv_bytes(rows("cheapish", changed={0: {"price": "1.29"}}))),
        (key("bargain"), csv_bytes([good_row("bargain", i, "4.99") for i in range(10)])),
        (key("dollarstore"), csv_bytes([good_row("dollarstore", i, "1.00") for i in range(10)])),
        # 4 of 10 brands blank (> 30 %) and 3 of 10 images blank (exactly 30 %: allowed).
        (
            key("nobrand"),
            csv_bytes(
                rows(
                    "nobrand",
                    changed={
                        **{i: dict(blank) for i in range(4)},
                        **{i: {"image_urls": ""} for i in range(4, 7)},
                    },
                )
            ),
        ),
        # Every null-audited field missing on 4 of 10 rows (price blank is valid: optional).
        (
            key("sparse"),
            csv_bytes(
                rows(
                    "sparse",
                    changed={
                        i: {
                            "price": "",
                            "brand": "",
                            "description": "",
                            "weight": "",
                            "image_urls": "",
                            "availability": "",
                        }
                        for i in range(4)
                    },
                )
            ),
        ),
        (key("featherweight"), csv_bytes(rows("featherweight", changed={0: {"weight": "0.5 g"}}))),
        (key("freight"), csv_bytes(rows("freight", changed={9: {"weight": "250 kg"}}))),
        (key("noname"), csv_bytes(rows("noname", changed={2: {"name": "N/A"}}))),
        (key("invisible"), csv_bytes(rows("invisible", changed={5: {"name": "\u200b"}}))),
        (key("old", days_ago=40), csv_bytes(rows("old"))),
        # Only ever delivered an unusable file: no completed file at all.
        (key("broken"), b"sku;name;url\n1;x;y\n"),
        # An old file and a fresh one: not stale.
        (key("steady", days_ago=45), csv_bytes(rows("steady"))),
        (key("steady", days_ago=2), csv_bytes(rows("steady"))),
    ]
    expected = {
        "decimals": ["decimal_bug"],
        "bargain": ["low_median"],
        "nobrand": ["high_null:brand"],
        "sparse": [
            "high_null:price",
            "high_null:brand",
            "high_null:description",
            "high_null:weight",
            "high_null:images",
            "high_null:availability",
        ],
        "featherweight": ["bad_weight"],
        "freight": ["bad_weight"],
        "noname": ["empty_name"],
        "invisible": ["empty_name"],
        "old": ["stale"],
        "broken": ["stale"],
    }
    return objects, expected


def ingest(objects, local_bucket, engine) -> None:
    for object_key, data in objects:
        local_bucket.put(object_key, data)
        ingest_object(local_bucket, engine, object_key, chunk_bytes=1024)


def materialize_quality(engine) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [catalog_quality],
        resources={"catalog_db": CatalogDatabase(url=engine.url.render_as_string(False))},
        run_config={
            "ops": {
                "catalog_quality": {
                    "config": {"now": NOW.isoformat(), "low_price_sources": ["dollarstore"]}
                }
            }
        },
    )


def checks_of(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {check.check_name: check for check in result.get_asset_check_evaluations()}


def test_a_crafted_catalog_triggers_each_flag_exactly_where_expected(engine, local_bucket):
    objects, expected = crafted_catalog()
    ingest(objects, local_bucket, engine)

    result = materialize_quality(engine)

    assert result.success
    metadata = result.asset_materializations_for_node("catalog_quality")[0].metadata
    assert metadata["flags"].data == expected
    table = metadata["per_source"].records
    assert sorted(record.data["source"] for record in table) == sorted(
        {object_key.split("/")[1].rsplit("_", 1)[0] for object_key, _ in objects}
    )
    by_source = {record.data["source"]: record.data for record in table}
    assert by_source["clean"]["flags"] == "ok"
    assert by_source["bargain"]["median_price"] == 4.99
    assert by_source["nobrand"]["null_brand_%"] == 40.0
    assert by_source["nobrand"]["null_images_%"] == 30.0
    assert by_source["broken"]["last_scrape"] == "never"
    chart = metadata["invalid_rate_chart"].value
    encoded = chart.split("base64,", 1)[1].rstrip(")")
    assert base64.b64decode(encoded).startswith(b"\x89PNG")

    checks = checks_of(result)
    assert set(checks) == set(CHECKS)
    for name, check in checks.items():
        flagged = {
            source: [flag for flag in flags if flag.split(":")[0] == name]
            for source, flags in expected.items()
        }
        flagged = {source: flags for source, flags in flagged.items() if flags}
        assert check.severity == dg.AssetCheckSeverity.WARN
        assert check.passed is (not flagged), name
        assert check.metadata["sources"].data == flagged, name


def test_a_clean_catalog_triggers_no_flag_and_a_rerun_reports_the_same(engine, local_bucket):
    ingest(
        [(key("clean"), csv_bytes(rows("clean"))), (key("other"), csv_bytes(rows("other")))],
        local_bucket,
        engine,
    )
    first, second = materialize_quality(engine), materialize_quality(engine)
    for result in (first, second):
        assert all(check.passed for check in checks_of(result).values())
        metadata = result.asset_materializations_for_node("catalog_quality")[0].metadata
        assert metadata["flags"].data == {} and metadata["flagged_sources"].value == 0
        assert metadata["dagster/row_count"].value == 20


def test_an_empty_catalog_is_audited_without_error(sqlite_engine):
    result = materialize_quality(sqlite_engine)
    assert result.success
    assert all(check.passed for check in checks_of(result).values())


def test_the_daily_schedule_requests_the_audit():
    context = dg.build_schedule_context(scheduled_execution_time=NOW)
    data = catalog_quality_schedule.evaluate_tick(context)
    assert len(data.run_requests) == 1
    assert catalog_quality_schedule.job_name == "catalog_quality_job"
    assert catalog_quality_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    job = build_definitions().resolve_job_def("catalog_quality_job")
    assert job.asset_layer.executable_asset_keys == {CATALOG_QUALITY}


def test_the_audit_is_requested_after_an_ingest_and_not_again_without_one():
    defs = build_definitions()
    with dg.instance_for_test() as instance:
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.get_num_requested(CATALOG_QUALITY) == 0
        instance.add_dynamic_partitions(source_csvs.name, ["shop_2026-06-01T00-00-00.csv"])
        instance.report_runless_asset_event(
            dg.AssetMaterialization(CATALOG_ITEMS, partition="shop_2026-06-01T00-00-00.csv")
        )
        after_ingest = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=first.cursor
        )
        assert after_ingest.get_num_requested(CATALOG_QUALITY) == 1
        quiet = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=after_ingest.cursor
        )
        assert quiet.get_num_requested(CATALOG_QUALITY) == 0


def test_automation_conditions_are_evaluated_by_a_sensor_that_is_on_by_default():
    sensor = build_definitions().resolve_sensor_def("catalog_automation_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert CATALOG_QUALITY in sensor.asset_selection.resolve(
        build_definitions().resolve_asset_graph()
    )
