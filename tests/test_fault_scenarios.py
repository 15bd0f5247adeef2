"""Issue 25's scenarios as a user runs them: `catalog-pipeline ingest --json` while the
PostgreSQL server is stopped for 30 s mid-run (it rides the outage out), and while the
object is overwritten mid-run (the file ends `failed` with the reason; the next ingest
completes the new version). Real servers, real processes, nothing mocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from catalog_pipeline.core.bucket import LocalBucket
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.engine import make_engine
from tests.helpers import completed_chunks, content_dump

REPO = Path(__file__).resolve().parents[1]
KEY = "shop_2026-11-06T06-00-00.csv"
OUTAGE_SECONDS = 30


def ingest(bucket: LocalBucket, database_url: str, chunk_bytes: int, **env) -> tuple:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "catalog_pipeline.cli",
            "ingest",
            "--json",
            "--bucket",
            bucket.url,
            "--database-url",
            database_url,
            "--chunk-bytes",
            str(chunk_bytes),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "DAGSTER_HOME": "", **env},
        timeout=600,
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-3000:]
    return result.returncode, json.loads(lines[-1]), result.stderr


def when_chunks_complete(database_url: str, action, count: int = 1) -> threading.Thread:
    """Run `action` in a thread as soon as `count` chunks of the ingest are stored."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while completed_chunks(database_url) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        action()

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


class PostgresServer:
    """A PostgreSQL of this test's own (the suite's shared one is never stopped)."""

    def __init__(self) -> None:
        started = subprocess.run(
            [str(REPO / "scripts" / "start-postgres.sh")], capture_output=True, text=True
        )
        if started.returncode != 0:
            pytest.fail(f"could not start PostgreSQL: {started.stderr}")
        lines = started.stdout.strip().splitlines()
        self.url = lines[-1]
        self.data = lines[0].split(": ", 1)[1].split(" (", 1)[0]
        self.bin = Path(self.data, "catalog-pg-bin").read_text().strip()

    def _pg_ctl(self, *arguments: str) -> None:
        command = " ".join([f"'{self.bin}/pg_ctl'", "-D", f"'{self.data}'", *arguments])
        if os.getuid() == 0:
            command = f'su postgres -s /bin/bash -c "{command}"'
        subprocess.run(command, shell=True, check=True, capture_output=True)

    def stop_immediately(self) -> None:
        self._pg_ctl("-m", "immediate", "-w", "stop")

    def start(self) -> None:
        port = make_url(self.url).port
        options = f"-p {port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl("-l", f"'{self.data}/server.log'", "-w", "start", "-o", f"'{options}'")

    def remove(self) -> None:
        subprocess.run([str(REPO / "scripts" / "stop-postgres.sh"), self.data], capture_output=True)


@pytest.mark.slow
def test_a_postgres_outage_of_30_seconds_mid_ingest_is_ridden_out(tmp_path):
    bucket = LocalBucket(tmp_path / "bucket")
    bucket.put(KEY, sample_csv(60_000, seed=41))
    chunk_bytes = 512 * 1024
    reference_url = f"sqlite:///{tmp_path / 'reference.sqlite'}"
    code, reference, _ = ingest(bucket, reference_url, chunk_bytes)
    assert code == 0

    server = PostgresServer()
    try:
        outage = {}

        def outage_window() -> None:
            server.stop_immediately()
            outage["stopped"] = time.monotonic()
            time.sleep(OUTAGE_SECONDS)
            server.start()
            outage["started"] = time.monotonic()

        thread = when_chunks_complete(server.url, outage_window)
        started = time.monotonic()
        code, result, stderr = ingest(bucket, server.url, chunk_bytes)
        thread.join()
        assert outage["started"] - outage["stopped"] >= OUTAGE_SECONDS
        assert time.monotonic() - started > OUTAGE_SECONDS  # the ingest waited it out
        assert code == 0, stderr[-3000:]
        assert result == reference
        (file,) = result["files"]
        assert file["status"] == "completed"
        assert "transient failure" in stderr  # the retries said what they were doing
        engine = make_engine(server.url)
        try:
            tables = content_dump(engine)
            with engine.connect() as connection:
                status = connection.execute(text("SELECT status FROM source_files")).scalars().all()
        finally:
            engine.dispose()
        assert status == ["completed"]
        assert tables == content_dump(make_engine(reference_url))  # nothing lost or doubled
    finally:
        server.remove()


@pytest.mark.slow
def test_an_object_overwritten_mid_ingest_fails_visibly_and_the_next_ingest_completes(tmp_path):
    bucket = LocalBucket(tmp_path / "bucket")
    bucket.put(KEY, sample_csv(60_000, seed=42))
    new_version = sample_csv(2_000, seed=43, sku_prefix="NEW")
    database_url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    chunk_bytes = 256 * 1024

    thread = when_chunks_complete(database_url, lambda: bucket.put(KEY, new_version))
    code, first, stderr = ingest(bucket, database_url, chunk_bytes)
    thread.join()
    assert code == 1
    (file,) = first["files"]
    assert file["status"] == "failed"
    assert "the object changed since it was planned" in file["rejected_reason"]
    assert "Failure" not in file["rejected_reason"]  # the root cause, not Dagster's wrapper
    assert "1 file failed" in stderr and "run the same command again" in stderr
    engine = make_engine(database_url)
    with engine.connect() as connection:
        (row,) = connection.execute(text("SELECT status, error FROM source_files")).all()
    assert row.status == "failed" and "the object changed" in row.error

    code, second, stderr = ingest(bucket, database_url, chunk_bytes)
    assert code == 0, stderr[-3000:]
    fresh = LocalBucket(tmp_path / "fresh")
    fresh.put(KEY, new_version)
    _, reference, _ = ingest(fresh, f"sqlite:///{tmp_path / 'fresh.sqlite'}", chunk_bytes)
    assert second == reference
    with engine.connect() as connection:
        statuses = (
            connection.execute(text("SELECT status FROM source_files ORDER BY id")).scalars().all()
        )
    assert statuses == ["superseded", "completed"]  # nothing left ingesting or planned
