"""A run that ends without completing its file leaves the file `failed`, with the root
cause, and one alert: a chunk step's process killed with SIGKILL, an object overwritten
mid-run; the run-failure sensor evaluated on the real instance; a re-run completes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import dagster as dg
import pytest
from dagster._core.execution.plan.objects import StepFailureData
from dagster._utils.error import SerializableErrorInfo
from sqlalchemy import select

from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.tables import ingest_leases, ingest_run_failures, source_files
from catalog_pipeline.definitions import build_definitions
from catalog_pipeline.executor import MULTIPROCESS as MULTIPROCESS_MODE
from catalog_pipeline.executor import execution_run_config
from catalog_pipeline.sensors.failures import ingest_run_failure_sensor
from tests.dagster_jobs import FAULT_SETTING, execute_faulty_ingest, resources
from tests.helpers import content_dump
from tests.webhook_receiver import WebhookReceiver

KEY = "shop_2026-11-05T06-00-00.csv"
CHUNK_BYTES = 32 * 1024
DATA = sample_csv(250, seed=31)
# Spawned step processes: a forkserver would keep the environment of the first test that
# started it, and these tests point the job at their own bucket and database by it.
MULTIPROCESS = execution_run_config(MULTIPROCESS_MODE, max_concurrent=2, start_method="spawn")


@pytest.fixture
def setup(monkeypatch, tmp_path, local_bucket, engine):
    local_bucket.put(KEY, DATA)
    database_url = engine.url.render_as_string(hide_password=False)
    monkeypatch.setenv("CATALOG_TEST_BUCKET_URL", local_bucket.url)
    monkeypatch.setenv("CATALOG_TEST_DATABASE_URL", database_url)
    monkeypatch.setenv("CATALOG_TEST_CHUNK_BYTES", str(CHUNK_BYTES))
    receiver = WebhookReceiver().__enter__()
    monkeypatch.setenv("CATALOG_ALERT_WEBHOOK_URL", receiver.url)
    yield receiver, database_url
    receiver.__exit__()


def _execute(instance: dg.DagsterInstance, run_config: dict, reexecution_of: str | None = None):
    return execute_faulty_ingest(instance, KEY, run_config, reexecution_of)


def _evaluate_failure_sensor(instance, database_url, bucket_url, cursor=None):
    definitions = build_definitions(resources(bucket_url, database_url, CHUNK_BYTES))
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        definitions=definitions,
        sensor_name=ingest_run_failure_sensor.name,
        resources=resources(bucket_url, database_url, CHUNK_BYTES),
    )
    sensor = definitions.resolve_sensor_def(ingest_run_failure_sensor.name)
    result = sensor.evaluate_tick(context)
    return result.cursor, result


def _file_rows(engine):
    with engine.connect() as connection:
        return connection.execute(
            select(
                source_files.c.status,
                source_files.c.error,
                source_files.c.failed_chunks,
                source_files.c.run_id,
            ).order_by(source_files.c.id)
        ).all()


@pytest.mark.slow  # about 25 s a database: spawned step processes
def test_a_chunk_step_killed_by_sigkill_leaves_the_file_failed_and_alerts_once(
    setup, engine, local_bucket, tmp_path, monkeypatch
):
    receiver, database_url = setup
    markers = tmp_path / "markers"
    with dg.instance_for_test() as instance:
        cursor, _ = _evaluate_failure_sensor(instance, database_url, local_bucket.url)
        from catalog_pipeline.ingest import plan_object

        planned = plan_object(local_bucket, engine, KEY, CHUNK_BYTES)
        monkeypatch.setenv(
            FAULT_SETTING,
            json.dumps(
                {"start": planned.chunks[1].start, "markers": str(markers), "hang_seconds": 120}
            ),
        )

        def kill_the_hanging_step() -> None:
            pid_file = markers / "pid"
            deadline = time.monotonic() + 60
            while not pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
            os.kill(int(pid_file.read_text()), signal.SIGKILL)

        killer = threading.Thread(target=kill_the_hanging_step)
        killer.start()
        failed = _execute(instance, MULTIPROCESS)
        killer.join()
        assert not failed.success
        assert _file_rows(engine)[-1].status == "ingesting"  # nothing in the run could say

        cursor, _ = _evaluate_failure_sensor(instance, database_url, local_bucket.url, cursor)
        (row,) = _file_rows(engine)
        assert row.status == "failed"
        assert 1 in json.loads(row.failed_chunks)
        assert row.error and "Traceback" not in row.error
        assert "process_chunk[chunk_00001]" in row.error and "SIGKILL" in row.error
        assert len(receiver.bodies) == 1
        alert = json.dumps(receiver.bodies[0])
        assert KEY in alert and failed.run_id[:8] in alert
        with engine.connect() as connection:
            recorded = connection.execute(select(ingest_run_failures)).one()
            assert recorded.run_id == failed.run_id and recorded.alerted_at is not None
            assert connection.execute(select(ingest_leases)).all() == []  # lease released

        # The sensor sees the run once: no second alert on the next tick.
        _evaluate_failure_sensor(instance, database_url, local_bucket.url, cursor)
        assert len(receiver.bodies) == 1

        monkeypatch.delenv(FAULT_SETTING)
        again = _execute(instance, MULTIPROCESS, reexecution_of=failed.run_id)
        assert again.success
    (row,) = _file_rows(engine)
    assert row.status == "completed"
    files = content_dump(engine)["files"]
    assert files == [(KEY, "completed", 250, files[0][3], files[0][4], 250)]


def test_a_run_failed_by_the_celery_engine_reports_the_steps_own_error():
    """dagster-celery fails a run whose step task raised in the worker (not in the step:
    a lost pool process, an instance the worker cannot load) with one wrapper error that
    lists each step's error after a header line; the reason is the step's, not the header."""
    from dagster._core.events import DagsterEvent, RunFailureReason
    from dagster._utils.error import SerializableErrorInfo

    from catalog_pipeline.sensors.failures import run_failure_reason

    @dg.job
    def celery_job():
        pass

    wrapper = SerializableErrorInfo(
        message="dagster._core.errors.DagsterSubprocessError: During celery execution errors "
        "occurred in workers:\n[catalog_ingest.process_chunk[chunk_00000]]: "
        "billiard.exceptions.WorkerLostError: Worker exited prematurely: signal 9 (SIGKILL)\n"
        "\nStack Trace:\n  File ...\n",
        stack=[],
        cls_name="DagsterSubprocessError",
    )
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(celery_job)
        instance.report_dagster_event(
            DagsterEvent.job_failure(
                "celery_job", "the run failed", RunFailureReason.STEP_FAILURE, wrapper
            ),
            run_id=run.run_id,
        )
        assert run_failure_reason(instance, run.run_id, "fallback") == (
            "[catalog_ingest.process_chunk[chunk_00000]]: billiard.exceptions.WorkerLostError: "
            "Worker exited prematurely: signal 9 (SIGKILL)"
        )


@pytest.mark.parametrize("config", ["dagster.yaml", "deploy/dagster.yaml"])
def test_a_run_past_its_maximum_runtime_fails_with_that_reason(tmp_path, config):
    """Run monitoring's backstop, as the daemon applies it: the instance's maximum runtime
    (6 h), overridden by a run's `dagster/max_runtime` tag; the run ends failed and the
    reason is the runtime, not the interrupted steps it leaves behind."""
    import logging

    from dagster._core.events import DagsterEvent, DagsterEventType
    from dagster._core.test_utils import create_run_for_test
    from dagster._daemon.monitoring.run_monitoring import check_run_timeout

    from catalog_pipeline.sensors.failures import run_failure_reason
    from tests.test_end_to_end import REPO

    home = tmp_path / "home"
    home.mkdir()
    text = (REPO / config).read_text()
    # Only the run-monitoring settings: the deployment's storage is PostgreSQL.
    start = text.index("run_monitoring:")
    end = text.index("\n\n", start)
    (home / "dagster.yaml").write_text(text[start:end] + "\n")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_monitoring_max_runtime_seconds == 6 * 3600
        run = create_run_for_test(
            instance, job_name="catalog_ingest_job", tags={"dagster/max_runtime": "1"}
        )
        instance.report_dagster_event(
            DagsterEvent(DagsterEventType.RUN_START.value, job_name=run.job_name),
            run_id=run.run_id,
        )
        instance.report_dagster_event(  # what a step interrupted by the termination leaves
            DagsterEvent(
                DagsterEventType.STEP_FAILURE.value,
                job_name=run.job_name,
                step_key="catalog_ingest.process_chunk[chunk_00000]",
                event_specific_data=StepFailureData(
                    error=SerializableErrorInfo(
                        "DagsterExecutionInterruptedError\n", [], "DagsterExecutionInterruptedError"
                    ),
                    user_failure_data=None,
                ),
            ),
            run_id=run.run_id,
        )
        record = instance.get_run_record_by_id(run.run_id)
        check_run_timeout(instance, record, logging.getLogger(__name__), 6 * 3600)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED
        time.sleep(1.2)
        record = instance.get_run_record_by_id(run.run_id)
        check_run_timeout(instance, record, logging.getLogger(__name__), 6 * 3600)
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        assert run_failure_reason(instance, run.run_id, "fallback") == (
            "the run exceeded its maximum runtime of 1 s and run monitoring stopped it "
            "(a `dagster/max_runtime` tag on the run allows more)"
        )
