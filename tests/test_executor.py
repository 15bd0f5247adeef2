"""`catalog_executor` decides from the object a run ingests, whatever launched it: a run
with no executor config (the Launchpad's default, a UI backfill, `dg launch`) executes
as the sensor's runs do."""

from __future__ import annotations

import dagster as dg
import pytest
from sqlalchemy import func, select

from catalog_pipeline.assets.partitions import partition_key_for, source_csvs
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.tables import catalog_items
from catalog_pipeline.executor import OBJECT_SIZE_TAG
from tests.dagster_jobs import faulty_ingest_job

KEY = "shop_2026-11-05T06-00-00.csv"
DATA = sample_csv(250, seed=31)
# Spawned step processes: a forkserver would keep the environment of the first test that
# started it, and these tests point the job at their own bucket and database by it.
SPAWN = {"execution": {"config": {"start_method": "spawn"}}}


@pytest.fixture
def job_settings(monkeypatch, local_bucket, sqlite_engine):
    def use(chunk_bytes: int) -> None:
        monkeypatch.setenv("CATALOG_TEST_CHUNK_BYTES", str(chunk_bytes))

    local_bucket.put(KEY, DATA)
    monkeypatch.setenv("CATALOG_TEST_BUCKET_URL", local_bucket.url)
    monkeypatch.setenv(
        "CATALOG_TEST_DATABASE_URL", sqlite_engine.url.render_as_string(hide_password=False)
    )
    return use


def _run(instance: dg.DagsterInstance, run_config: dict, tags: dict | None = None):
    partition = partition_key_for(KEY)
    instance.add_dynamic_partitions(source_csvs.name, [partition])
    result = dg.execute_job(
        dg.reconstructable(faulty_ingest_job),
        instance,
        run_config=run_config,
        tags={"dagster/partition": partition, **(tags or {})},
        raise_on_error=False,
    )
    failures = [
        event.message for event in result.all_events if event.is_failure or event.is_step_failure
    ]
    assert result.success, failures
    return result


def _decision(instance: dg.DagsterInstance, run_id: str) -> tuple[str, int, int]:
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        if (event.message or "").startswith("catalog_executor:"):
            metadata = event.engine_event_data.metadata
            return (
                metadata["mode"].value,
                metadata["max_concurrent"].value,
                metadata["object_bytes"].value,
            )
    raise AssertionError("the run logged no executor decision")


def _step_processes(instance: dg.DagsterInstance, run_id: str) -> int:
    return len(instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED))


def test_a_small_object_runs_in_process_with_no_executor_config(job_settings, sqlite_engine):
    job_settings(1 << 20)  # one chunk
    with dg.instance_for_test() as instance:
        result = _run(instance, {})  # what a UI launch sends
        assert _decision(instance, result.run_id) == ("in_process", 1, len(DATA))
        assert _step_processes(instance, result.run_id) == 0
    with sqlite_engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(catalog_items)) > 0


def test_a_large_object_runs_chunk_steps_in_processes(job_settings):
    job_settings(100_000)  # four chunks: more than three
    with dg.instance_for_test() as instance:
        result = _run(instance, SPAWN)
        mode, steps_at_a_time, size = _decision(instance, result.run_id)
        assert (mode, size) == ("multiprocess", len(DATA))
        assert 2 <= steps_at_a_time <= 4  # a step per core plus one, at most the chunks
        assert _step_processes(instance, result.run_id) >= 6  # plan, 4 chunks, finalize


def test_the_sensors_size_tag_spares_a_head_request(job_settings):
    job_settings(1 << 20)
    claimed = 10 * (1 << 20)  # ten chunks, by the tag: the bucket is not asked
    with dg.instance_for_test() as instance:
        result = _run(instance, SPAWN, {OBJECT_SIZE_TAG: str(claimed)})
        assert _decision(instance, result.run_id)[::2] == ("multiprocess", claimed)


def test_a_reexecution_without_the_plan_step_is_still_an_ingest(job_settings):
    # Re-executing from failure runs only some chunk steps and `finalize`: the object is
    # as large as it was, so its steps still fork.
    job_settings(100_000)
    with dg.instance_for_test() as instance:
        first = _run(instance, SPAWN)
        again = dg.execute_job(
            dg.reconstructable(faulty_ingest_job),
            instance,
            run_config=SPAWN,
            reexecution_options=dg.ReexecutionOptions(
                parent_run_id=first.run_id, step_selection=["catalog_ingest.finalize"]
            ),
            raise_on_error=False,
        )
        assert again.success
        assert _decision(instance, again.run_id)[::2] == ("multiprocess", len(DATA))
