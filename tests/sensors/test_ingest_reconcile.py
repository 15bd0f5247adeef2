"""The backstop behind the run-failure sensors: `ingest_reconcile_sensor` marks files left
open by runs nobody holds any more, sends alerts that could not go out; a re-execution
takes its file over so a late failure record of the earlier run cannot touch it; a run
cancelled in the queue (it touched nothing) records nothing."""

from __future__ import annotations

import socket
from datetime import timedelta

import dagster as dg
from sqlalchemy import select, update

from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.failures import record_run_failure
from catalog_pipeline.db.tables import ingest_leases, ingest_run_failures, source_files, utcnow
from catalog_pipeline.definitions import build_definitions
from catalog_pipeline.ingest import adopt_file, ingest_chunk, plan_object
from catalog_pipeline.sensors.failures import ingest_reconcile_sensor, record_failed_run
from tests.dagster_jobs import resources
from tests.webhook_receiver import WebhookReceiver

KEY = "shop_2026-11-10T06-00-00.csv"
CHUNK_BYTES = 16 * 1024


def _evaluate(instance, engine, bucket):
    url = engine.url.render_as_string(hide_password=False)
    definitions = build_definitions(resources(bucket.url, url, CHUNK_BYTES))
    context = dg.build_sensor_context(
        instance=instance,
        definitions=definitions,
        sensor_name=ingest_reconcile_sensor.name,
        resources=resources(bucket.url, url, CHUNK_BYTES),
    )
    return definitions.resolve_sensor_def(ingest_reconcile_sensor.name).evaluate_tick(context)


def _age(engine, minutes: int = 5) -> None:
    with engine.begin() as connection:
        connection.execute(
            update(source_files).values(updated_at=utcnow() - timedelta(minutes=minutes))
        )


def _file(engine):
    with engine.connect() as connection:
        return connection.execute(
            select(source_files.c.status, source_files.c.error, source_files.c.run_id)
        ).one()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_file_whose_run_vanished_is_marked_failed_and_its_alert_is_resent(
    engine, local_bucket, monkeypatch
):
    local_bucket.put(KEY, sample_csv(200, seed=71))
    planned = plan_object(local_bucket, engine, KEY, CHUNK_BYTES, run_id="cli-run-1")
    ingest_chunk(local_bucket, engine, planned, planned.chunks[0], "cli-run-1")
    port = _free_port()
    monkeypatch.setenv("CATALOG_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{port}/hook/secret")
    monkeypatch.setenv("CATALOG_RETRY_BUDGET_S", "1")
    with dg.instance_for_test() as instance:
        _evaluate(instance, engine, local_bucket)
        assert _file(engine).status == "ingesting"  # young, and its lease is held

        # The process was killed: its lease lapses, nobody renews the file.
        with engine.begin() as connection:
            connection.execute(
                update(ingest_leases).values(expires_at=utcnow() - timedelta(seconds=1))
            )
        _age(engine)
        _evaluate(instance, engine, local_bucket)  # the webhook is down: not delivered
        status, error, run_id = _file(engine)
        assert status == "failed" and "cli-run-1" in error and "ended without a record" in error
        with engine.connect() as connection:
            assert connection.execute(select(ingest_run_failures.c.alerted_at)).scalar_one() is None

        receiver = WebhookReceiver(port=port).__enter__()
        try:
            _evaluate(instance, engine, local_bucket)
            _evaluate(instance, engine, local_bucket)
        finally:
            receiver.__exit__()
    assert len(receiver.bodies) == 1 and KEY in str(receiver.bodies[0])
    with engine.connect() as connection:
        assert connection.execute(select(ingest_run_failures.c.alerted_at)).scalar_one()


def test_a_reexecution_takes_the_file_over_so_the_old_runs_record_cannot_touch_it(
    engine, local_bucket
):
    local_bucket.put(KEY, sample_csv(200, seed=72))
    planned = plan_object(local_bucket, engine, KEY, CHUNK_BYTES, run_id="run-1")
    record_run_failure(engine, "run-1", [], KEY, "chunk 1 failed")
    assert _file(engine).status == "failed"

    adopt_file(engine, planned, "run-2", ["run-2", "run-1"])
    assert _file(engine)[0::2] == ("ingesting", "run-2")
    # The first run's failure, recorded again (a late sensor tick): the file stays.
    recorded = record_run_failure(engine, "run-1", [], KEY, "late")
    assert not recorded.file_marked and _file(engine).status == "ingesting"
    with engine.connect() as connection:
        assert connection.execute(select(ingest_leases.c.run_id)).scalar_one() == "run-2"


def test_a_run_cancelled_in_the_queue_records_nothing(engine, local_bucket):
    local_bucket.put(KEY, sample_csv(50, seed=73))
    url = engine.url.render_as_string(hide_password=False)
    with dg.instance_for_test() as instance:
        run = instance.create_run_for_job(
            build_definitions(resources(local_bucket.url, url, CHUNK_BYTES)).resolve_job_def(
                "catalog_ingest_job"
            ),
            tags={"dagster/partition": KEY},
        )
        instance.report_run_canceled(run)
        canceled = instance.get_run_by_id(run.run_id)
        res = resources(local_bucket.url, url, CHUNK_BYTES)
        assert record_failed_run(instance, canceled, "x", res["catalog_db"], res["bucket"]) is None
    with engine.connect() as connection:
        assert connection.execute(select(ingest_run_failures)).all() == []
        assert connection.execute(select(source_files)).all() == []
