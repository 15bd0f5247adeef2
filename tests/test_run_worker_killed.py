"""A run worker killed with SIGKILL under `dagster dev` (the small-file path: every step
runs in the run worker's own process): run monitoring fails the run (the local launcher's
health check), the run-failure sensor records it and sends one alert, and the run retry
completes the file from failure."""

from __future__ import annotations

import os
import shutil
import signal
import time

import dagster as dg
import pytest
from sqlalchemy import text

from catalog_pipeline.core.bucket import LocalBucket
from catalog_pipeline.core.processes import process_alive
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.engine import make_engine
from catalog_pipeline.run_launcher import run_worker_pid
from tests.helpers import completed_chunks
from tests.test_end_to_end import REPO, Dagster, wait_for
from tests.webhook_receiver import WebhookReceiver

KEY = "shop_2026-11-08T06-00-00.csv"
ROWS = 100_000  # about 127 MB
CHUNK_BYTES = 48 * 1024 * 1024  # three chunks: the sensor runs it in the run worker


def _statuses(database: str) -> list[str]:
    engine = make_engine(database)
    try:
        with engine.connect() as connection:
            return (
                connection.execute(text("SELECT status FROM source_files ORDER BY id"))
                .scalars()
                .all()
            )
    except Exception:
        return []
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_killed_run_worker_ends_failed_alerts_once_and_the_retry_completes(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    bucket = LocalBucket(tmp_path / "bucket")
    database = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    receiver = WebhookReceiver().__enter__()
    dagster = Dagster(
        home,
        {
            "CATALOG_BUCKET_URL": bucket.url,
            "CATALOG_DATABASE_URL": database,
            "CATALOG_CHUNK_BYTES": str(CHUNK_BYTES),
            "CATALOG_SENSOR_INTERVAL_SECONDS": "1",
            "CATALOG_ALERT_WEBHOOK_URL": receiver.url,
        },
    )
    try:
        dagster.wait_ready()
        bucket.put(KEY, sample_csv(ROWS, seed=61))
        (run,) = wait_for(
            lambda: dagster.runs("dagster/sensor_name", "new_csv_objects_sensor"),
            "the sensor's run",
            dagster,
        )
        deadline = time.monotonic() + 120
        while completed_chunks(database) < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        instance = dg.DagsterInstance.from_config(str(home))
        pid = run_worker_pid(instance, run["runId"])
        assert pid is not None and process_alive(pid)
        os.kill(pid, signal.SIGKILL)

        # The run fails (run monitoring), is retried from failure (run retries), and its
        # failure is recorded and announced (the run-failure sensor). The file is `failed`
        # between the first two unless the retry has already completed it: never after.
        wait_for(lambda: receiver.bodies, "the alert", dagster)
        assert KEY in str(receiver.bodies[0]) and run["runId"][:8] in str(receiver.bodies[0])
        failed_run = instance.get_run_by_id(run["runId"])
        assert failed_run.status == dg.DagsterRunStatus.FAILURE

        def retried_and_completed():
            failed = instance.get_run_by_id(run["runId"])
            retry_id = failed.tags.get("dagster/auto_retry_run_id")
            retry = retry_id and instance.get_run_by_id(retry_id)
            return retry and retry.status == dg.DagsterRunStatus.SUCCESS

        wait_for(retried_and_completed, "the run retry to complete the file", dagster)
        assert _statuses(database) == ["completed"]
        engine = make_engine(database)
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT rows_total, rows_valid + rows_invalid, error FROM source_files")
            ).one()
            failures = connection.execute(
                text("SELECT run_id, reason FROM ingest_run_failures")
            ).all()
        engine.dispose()
        assert row[0] == row[1] == ROWS
        assert [f.run_id for f in failures] == [run["runId"]]
        assert "SIGKILL" in failures[0].reason and "run worker" in failures[0].reason
        assert len(receiver.bodies) == 1  # one alert for the one failed run
    finally:
        dagster.stop()
        receiver.__exit__()
