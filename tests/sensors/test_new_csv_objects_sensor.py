"""`new_csv_objects_sensor` evaluated against a real Dagster instance, bucket and catalog."""

from __future__ import annotations

import json

import dagster as dg
import pytest
from sqlalchemy import select

from catalog_pipeline.assets.partitions import partition_key_for, source_csvs
from catalog_pipeline.core.bucket import LocalBucket
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.tables import source_files
from catalog_pipeline.ingest import ingest_object
from catalog_pipeline.resources.catalog import BucketResource, CatalogDatabase, IngestSettings
from catalog_pipeline.sensors.objects import (
    ETAG_TAG,
    OBJECT_KEY_TAG,
    build_new_csv_objects_sensor,
    run_key,
)

GOOD = sample_csv(5, seed=3)


LISTED: list[int] = []  # objects listed per tick


class CountingBucketResource(BucketResource):
    """The real local bucket, counting how many objects each tick lists."""

    def open(self):
        inner = super().open()
        listed = LISTED
        listed.append(0)

        class Counting:
            url = inner.url

            def list_objects(self, start_after=None):
                for info in inner.list_objects(start_after):
                    listed[-1] += 1
                    yield info

            def __getattr__(self, name):
                return getattr(inner, name)

        return Counting()


def ingested_versions(engine) -> set[tuple[str, str]]:
    """The (object_key, etag) versions `source_files` holds."""
    with engine.connect() as connection:
        return {
            (row.object_key, row.etag)
            for row in connection.execute(select(source_files.c.object_key, source_files.c.etag))
        }


@pytest.fixture
def tick(local_bucket, sqlite_engine):
    """Evaluate a sensor like the daemon does: apply its partition requests, keep its cursor,
    and launch nothing twice for one run key.

    The daemon's run-key deduplication would hide a sensor that asks again for what is
    done, so every tick checks that the sensor itself requested no object version that
    was already ingested before the tick (its `source_files` row and its partition exist)."""
    state = {"cursor": None, "run_keys": set()}
    LISTED.clear()
    resources = {
        "bucket": CountingBucketResource(url=local_bucket.url),
        "catalog_db": CatalogDatabase(url=str(sqlite_engine.url)),
        "ingest_settings": IngestSettings(chunk_bytes=1 << 20),
    }

    def evaluate(instance, sensor=None) -> tuple[list[dg.RunRequest], dg.SensorResult]:
        sensor = sensor or build_new_csv_objects_sensor()
        context = dg.build_sensor_context(
            instance=instance, cursor=state["cursor"], resources=resources
        )
        done = ingested_versions(sqlite_engine)
        partitions = set(instance.get_dynamic_partitions(source_csvs.name))
        result = sensor(context)
        asked_again = [
            request.run_key
            for request in result.run_requests
            if (request.tags[OBJECT_KEY_TAG], request.tags[ETAG_TAG]) in done
            and request.partition_key in partitions
        ]
        assert asked_again == [], f"ingested versions requested again: {asked_again}"
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        state["cursor"] = result.cursor
        fresh = [r for r in result.run_requests if r.run_key not in state["run_keys"]]
        state["run_keys"].update(r.run_key for r in result.run_requests)
        return fresh, result

    evaluate.state = state
    return evaluate


def keys_of(requests) -> list[str]:
    return sorted(request.tags["catalog/object_key"] for request in requests)


def test_finds_keys_sorting_before_the_cursor_and_ignores_non_csv(tick, local_bucket):
    for key in ("m_1.csv", "n_2.csv", "notes.txt", "z/folder.CSV"):
        local_bucket.put(key, GOOD)
    sensor = build_new_csv_objects_sensor(scan_limit=2)
    with dg.instance_for_test() as instance:
        first, result = tick(instance, sensor)
        assert (
            keys_of(first) == ["m_1.csv", "n_2.csv"]
            and json.loads(result.cursor)["after"] == "n_2.csv"
        )
        local_bucket.put("a_early.csv", GOOD)  # sorts before the cursor
        second, result = tick(instance, sensor)
        assert (
            keys_of(second) == ["z/folder.CSV"]
            and json.loads(result.cursor)["after"] == "z/folder.CSV"
        )
        nothing, result = tick(instance, sensor)
        assert (
            nothing == [] and json.loads(result.cursor)["after"] == ""
        )  # the sweep is over: start again
        third, _ = tick(instance, sensor)
        assert "a_early.csv" in keys_of(third)
        assert set(instance.get_dynamic_partitions(source_csvs.name)) >= {
            partition_key_for(k) for k in ("a_early.csv", "m_1.csv", "n_2.csv", "z/folder.CSV")
        }
        request = third[0] if keys_of(third)[0] == "a_early.csv" else third[-1]
        assert request.partition_key == partition_key_for("a_early.csv")
        # No executor config: catalog_executor decides from the size tag, as for a UI run.
        assert request.run_config == {}
        assert request.tags["catalog/object_size"] == str(len(GOOD))


def test_a_reupload_with_a_new_etag_is_requested_again(tick, local_bucket, sqlite_engine):
    key = "shop, the best|one_2026-11-01T06-00-00.csv"
    first_version = local_bucket.put(key, GOOD)
    with dg.instance_for_test() as instance:
        (request,), _ = tick(instance)
        assert request.run_key == run_key(partition_key_for(key), first_version.etag)
        ingest_object(local_bucket, sqlite_engine, key, 1024)  # what the run does
        assert tick(instance)[1].run_requests == []  # ingested: not asked for at all
        second_version = local_bucket.put(key, sample_csv(6, seed=4))
        (again,), _ = tick(instance)
        assert again.run_key == run_key(partition_key_for(key), second_version.etag)
        assert again.partition_key == request.partition_key


def test_ingested_versions_are_never_requested_again_in_any_later_sweep(
    tick, local_bucket, sqlite_engine
):
    keys = [f"shop{number}_2026-11-0{number}T06-00-00.csv" for number in range(1, 6)]
    for number, key in enumerate(keys):
        local_bucket.put(key, sample_csv(5, seed=number))
    sensor = build_new_csv_objects_sensor(scan_limit=2)
    with dg.instance_for_test() as instance:
        requested = []
        for _ in range(3):  # one sweep: 2 + 2 + 1 objects
            requested += tick(instance, sensor)[1].run_requests
        assert keys_of(requested) == sorted(keys)
        for key in keys[:4]:
            ingest_object(local_bucket, sqlite_engine, key, 1024)  # what the runs do
        # Three more sweeps: only the one version not yet ingested is asked for, once each.
        later = [r for _ in range(9) for r in tick(instance, sensor)[1].run_requests]
        assert keys_of(later) == [keys[4]] * 3

    # A fresh Dagster instance has none of the partitions: what the catalog holds is
    # requested again there (the re-ingest is a no-op on the catalog).
    with dg.instance_for_test() as fresh:
        again = [r for _ in range(3) for r in tick(fresh, sensor)[1].run_requests]
        assert keys_of(again) == sorted(keys)


def test_empty_and_unreadable_objects_are_rejected_without_stopping_the_tick(
    tick, local_bucket, sqlite_engine
):
    local_bucket.put("a_empty.csv", b"")
    local_bucket.put("b_binary.csv", b"\xff\xfe\x00s\x00k\x00u\n")
    local_bucket.put("c_no_url.csv", b"sku,name\n1,x\n")
    local_bucket.put("d_good.csv", GOOD)
    with dg.instance_for_test() as instance:
        requests, result = tick(instance)
        assert keys_of(requests) == ["d_good.csv"]
        with sqlite_engine.connect() as connection:
            rows = dict(
                connection.execute(
                    select(source_files.c.object_key, source_files.c.rejected_reason).where(
                        source_files.c.status == "rejected"
                    )
                ).all()
            )
        assert set(rows) == {"a_empty.csv", "b_binary.csv", "c_no_url.csv"}
        assert "empty" in rows["a_empty.csv"]
        assert "not valid UTF-8 at byte 0" in rows["b_binary.csv"]
        assert "'url'" in rows["c_no_url.csv"]
        for event in result.asset_events:  # as the daemon stores a sensor's events
            instance.report_runless_asset_event(event)
        # Each rejected partition is materialized with 0 rows and its reason (not left
        # "Missing"), and its `file_accepted` check failed as a warning.
        stored = instance.fetch_materializations(dg.AssetKey("catalog_items"), limit=10)
        materialized = {
            record.partition_key: record.asset_materialization.metadata for record in stored.records
        }
        assert set(materialized) == {partition_key_for(key) for key in rows}
        for key, reason in rows.items():
            metadata = materialized[partition_key_for(key)]
            assert metadata["status"].value == "rejected"
            assert metadata["rejected_reason"].value == reason
            assert metadata["dagster/row_count"].value == 0
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("catalog_items"), "file_accepted"), limit=10
        )
        assert len(checks) == 3
        assert {check.status.value for check in checks} == {"FAILED"}
        assert tick(instance)[0] == []  # recorded: a later sweep does not ask again


def test_a_tick_over_5000_objects_stays_bounded_and_a_few_ticks_find_them_all(
    tick, local_bucket: LocalBucket
):
    folder = local_bucket.root
    for number in range(5000):
        path = folder / f"shop{number % 7}" / f"scrape_{number:05d}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(GOOD)
    (folder / "shop0" / "manifest.json").write_text("{}")
    sensor = build_new_csv_objects_sensor(scan_limit=1000, request_limit=400)
    requested: list[str] = []
    with dg.instance_for_test() as instance:
        for _ in range(20):
            fresh, result = tick(instance, sensor)
            assert len(result.run_requests) <= 400
            assert LISTED[-1] <= 1000
            requested += keys_of(fresh)
            if len(requested) >= 5000:
                break
        assert len(requested) == len(set(requested)) == 5000
        assert len(LISTED) == 13  # 5000 / 400 requests per tick
