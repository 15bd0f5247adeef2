"""`partition_retention_job` on SQLite and Postgres catalogs with a real Dagster instance:
exactly the settled, old partitions go; in-flight, failed, ingesting, recent and unknown
ones stay; `source_files` keeps the record and a re-upload brings a partition back."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.test_utils import create_run_for_test
from sqlalchemy import insert, select

from catalog_pipeline.assets.partitions import partition_key_for, source_csvs
from catalog_pipeline.db.ingest import latest_summary
from catalog_pipeline.db.partitions import RETENTION_DAYS_SETTING, retention_days
from catalog_pipeline.db.tables import source_files
from catalog_pipeline.definitions import build_definitions
from catalog_pipeline.ingest import ingest_object
from catalog_pipeline.resources.catalog import BucketResource, CatalogDatabase
from catalog_pipeline.schedules.partitions import PARTITION_TAG
from catalog_pipeline.sensors.objects import OBJECT_KEY_TAG, build_new_csv_objects_sensor

NOW = datetime.now(UTC)
BODY = b"sku,name,url\nA-1,Tent,https://shop.example.com/a\n"

# object key → its versions (status, age in days), oldest first
FILES = {
    "old_completed.csv": [("completed", 40)],
    "shop, the best|one_2026-01-01T06-00-00.csv": [("completed", 40)],  # an encoded key
    "old_superseded.csv": [("superseded", 45), ("completed", 40)],
    "only_superseded.csv": [("superseded", 40)],
    "old_rejected.csv": [("rejected", 40)],
    "finished_run.csv": [("completed", 40)],
    "recent_completed.csv": [("completed", 5)],
    "old_then_recent.csv": [("superseded", 60), ("completed", 2)],
    "failed.csv": [("superseded", 60), ("failed", 40)],
    "ingesting.csv": [("ingesting", 40)],
    "queued.csv": [("completed", 40)],
    "started.csv": [("completed", 40)],
}
RETIRED = {
    "old_completed.csv",
    "shop, the best|one_2026-01-01T06-00-00.csv",
    "old_superseded.csv",
    "only_superseded.csv",
    "old_rejected.csv",
    "finished_run.csv",
}
RUNS = {
    "queued.csv": dg.DagsterRunStatus.NOT_STARTED,
    "started.csv": dg.DagsterRunStatus.STARTED,
    "finished_run.csv": dg.DagsterRunStatus.SUCCESS,
}


def record(engine, object_key: str, versions, etags=None) -> None:
    with engine.begin() as connection:
        for number, (status, days) in enumerate(versions):
            at = NOW - timedelta(days=days)
            connection.execute(
                insert(source_files).values(
                    object_key=object_key,
                    etag=etags[number] if etags else f"etag-{number}",
                    source="shop",
                    observed_at=at,
                    size=len(BODY),
                    status=status,
                    created_at=at,
                    updated_at=at,
                )
            )


def seed(engine, instance, kept_first: bool = False) -> None:
    for key, versions in FILES.items():
        record(engine, key, versions)
    keys = [*FILES, "unrecorded.csv"]
    instance.add_dynamic_partitions(
        source_csvs.name, [partition_key_for(key) for key in (keys[::-1] if kept_first else keys)]
    )
    for key, status in RUNS.items():
        create_run_for_test(
            instance,
            job_name="catalog_ingest_job",
            status=status,
            tags={PARTITION_TAG: partition_key_for(key)},
        )


def run(engine, instance, **config) -> dict:
    job = build_definitions({"catalog_db": CatalogDatabase(url=_url(engine))}).resolve_job_def(
        "partition_retention_job"
    )
    result = job.execute_in_process(
        instance=instance,
        run_config={"ops": {"delete_retired_partitions": {"config": config}}},
    )
    assert result.success
    (event,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
    return {key: value.value for key, value in event.step_output_data.metadata.items()}


def _url(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def live(instance) -> set[str]:
    return set(instance.get_dynamic_partitions(source_csvs.name))


def test_exactly_the_settled_old_partitions_go_and_a_second_run_changes_nothing(engine):
    with dg.instance_for_test() as instance:
        seed(engine, instance)
        metadata = run(engine, instance)
        kept = {partition_key_for(key) for key in [*FILES, "unrecorded.csv"] if key not in RETIRED}
        assert live(instance) == kept
        assert metadata["deleted"] == len(RETIRED) == 6
        assert metadata["examined"] == 13 and metadata["batches"] == 1
        assert {key: value for key, value in metadata.items() if key.startswith("kept/")} == {
            "kept/failed": 1,
            "kept/ingesting": 1,
            "kept/recent": 2,
            "kept/run_in_flight": 2,
            "kept/unrecorded": 1,
        }
        assert metadata["live_partitions"] == 7 and metadata["retention_days"] == 30
        assert "capped" not in metadata and "held" not in metadata
        # The catalog keeps every row: status and supersession do not depend on partitions.
        with engine.connect() as connection:
            assert connection.execute(select(source_files.c.id)).all().__len__() == 15

        again = run(engine, instance)
        assert again["deleted"] == 0 and live(instance) == kept


def test_bounded_batches_go_on_where_the_last_run_stopped(sqlite_engine):
    """The oldest partitions are the kept ones here: the batch cap never lets one run
    reach the others, the next run goes on after them."""
    with dg.instance_for_test() as instance:
        seed(sqlite_engine, instance, kept_first=True)
        runs = [run(sqlite_engine, instance, batch_size=3, max_batches=2) for _ in range(3)]
        assert [r["examined"] for r in runs] == [6, 6, 1]
        assert [r["deleted"] for r in runs] == [0, 5, 1]
        assert [r.get("capped", False) for r in runs] == [True, True, False]
        assert live(instance).isdisjoint({partition_key_for(key) for key in RETIRED})
        assert "live_partitions" not in runs[2]  # it did not start from the oldest
        whole = run(sqlite_engine, instance, batch_size=3, max_batches=5)  # from the oldest
        assert whole["examined"] == 7 and whole["deleted"] == 0
        assert whole["live_partitions"] == 7


def test_a_backfill_in_progress_or_retention_off_deletes_nothing(sqlite_engine, monkeypatch):
    with dg.instance_for_test() as instance:
        seed(sqlite_engine, instance)
        before = live(instance)
        monkeypatch.setenv(RETENTION_DAYS_SETTING, "0")
        assert run(sqlite_engine, instance)["held"] == "partition retention is off (0 days)"
        monkeypatch.delenv(RETENTION_DAYS_SETTING)
        instance.add_backfill(
            PartitionBackfill(
                backfill_id="nightly",
                status=BulkActionStatus.REQUESTED,
                from_failure=False,
                tags={},
                backfill_timestamp=time.time(),
                partition_names=[partition_key_for("old_completed.csv")],
            )
        )
        metadata = run(sqlite_engine, instance)
        assert metadata["deleted"] == 0 and "backfill nightly" in metadata["held"]
        assert live(instance) == before


def test_retired_partitions_stay_gone_and_a_reupload_brings_one_back(local_bucket, sqlite_engine):
    keys = ["shop_2026-01-01T06-00-00.csv", "shop_2026-01-02T06-00-00.csv"]
    infos = [local_bucket.put(key, BODY) for key in keys]
    for info in infos:
        record(sqlite_engine, info.key, [("completed", 40)], etags=[info.etag])
    resources = {
        "bucket": BucketResource(url=local_bucket.url),
        "catalog_db": CatalogDatabase(url=str(sqlite_engine.url)),
    }
    sensor = build_new_csv_objects_sensor()

    def tick(instance):
        result = sensor(dg.build_sensor_context(instance=instance, resources=resources))
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        assert json.loads(result.cursor)["after"] == ""  # one tick is a whole sweep here
        return result

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_csvs.name, keys)
        assert run(sqlite_engine, instance)["deleted"] == 2 and live(instance) == set()
        assert tick(instance).run_requests == []  # settled long ago: not asked for again
        assert live(instance) == set()

        again = local_bucket.put(keys[0], BODY + b"A-2,Stove,https://shop.example.com/b\n")
        (request,) = tick(instance).run_requests
        assert request.tags[OBJECT_KEY_TAG] == keys[0]
        assert live(instance) == {keys[0]}  # the partition is back, with the run
        ingest_object(local_bucket, sqlite_engine, keys[0], 1024)  # what the run does
        summary = latest_summary(sqlite_engine, keys[0])
        assert summary.etag == again.etag and summary.status == "completed"
        with sqlite_engine.connect() as connection:
            statuses = dict(
                connection.execute(
                    select(source_files.c.etag, source_files.c.status).where(
                        source_files.c.object_key == keys[0]
                    )
                ).all()
            )
        assert statuses == {infos[0].etag: "superseded", again.etag: "completed"}


def test_the_schedule_runs_the_job_daily():
    definitions = build_definitions()
    schedule = definitions.resolve_schedule_def("partition_retention_schedule")
    assert schedule.job_name == "partition_retention_job"
    assert schedule.cron_schedule == "30 9 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


@pytest.mark.parametrize("value", ["-1", "thirty"])
def test_a_bad_retention_setting_is_named(monkeypatch, value):
    monkeypatch.setenv(RETENTION_DAYS_SETTING, value)
    with pytest.raises(ValueError, match=RETENTION_DAYS_SETTING):
        retention_days()
