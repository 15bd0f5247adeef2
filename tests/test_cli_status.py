"""`catalog-pipeline status` as a user runs it, after a real demo or ingest: the counts are
the database's, the runs are the instance's (or the database's), failed files come with
the command that retries them, and a bad database URL is a sentence and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url

from catalog_pipeline.core.bucket import LocalBucket
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.engine import make_engine
from catalog_pipeline.db.tables import (
    catalog_items,
    ingest_leases,
    invalid_item_logs,
    source_files,
)
from tests.helpers import hold_ingest_lease
from tests.test_cli import cli, json_output

NO_INSTANCE = {"DAGSTER_HOME": ""}


def database_counts(engine: Engine) -> tuple[dict[str, int], int, int]:
    with engine.connect() as connection:
        query = select(source_files.c.status, func.count()).group_by(source_files.c.status)
        statuses = {status: count for status, count in connection.execute(query)}
        items = connection.execute(select(func.count()).select_from(catalog_items)).scalar()
        invalid = connection.execute(select(func.count()).select_from(invalid_item_logs)).scalar()
    return statuses, items, invalid


def test_status_after_a_demo_has_the_database_counts(tmp_path: Path):
    demo = cli("demo", "--rows", "3000", "--json", cwd=tmp_path, env=NO_INSTANCE)
    assert demo.returncode == 0, demo.stderr
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'catalog.sqlite'}")
    statuses, items, invalid = database_counts(engine)
    assert statuses == {"completed": 4, "rejected": 1} and items > 0 and invalid > 0

    status = json_output(cli("status", "--json", cwd=tmp_path, env=NO_INSTANCE))
    files = status["files"]
    assert (files["completed"], files["rejected"], files["failed"]) == (4, 1, 0)
    assert files["ingesting"] == 0 and files["oldest_ingesting_age_seconds"] is None
    assert status["catalog_items"] == items
    assert status["invalid_rows"] == invalid
    # Without an instance, the newest ingest of each object comes from its file row.
    partitions = status["partitions"]
    assert partitions["source"] == "database" and partitions["count"] == 5
    with engine.connect() as connection:
        query = select(source_files.c.object_key, source_files.c.run_id)
        runs = {key: run_id for key, run_id in connection.execute(query)}
    assert {entry["object_key"]: entry["run_id"] for entry in partitions["latest"]} == runs
    outcomes = {entry["object_key"]: entry["outcome"] for entry in partitions["latest"]}
    assert outcomes["legacy-export_2026-11-21T06-00-00.csv"] == "rejected"
    queues = status["queues"]
    assert queues["classification"]["pending"] == items  # nothing classified yet
    assert queues["embeddings"]["pending"] == items
    assert queues["playcount"] == {"pending": 0, "in_progress": 0, "done": 0, "failed": 0}
    assert status["sensor"] is None  # no instance, no ticks to read

    human = cli("status", cwd=tmp_path, env=NO_INSTANCE)
    assert human.returncode == 0, human.stderr
    assert "4 completed, 1 rejected, 0 failed, 0 ingesting" in human.stdout
    assert f"catalog items:  {items:,}" in human.stdout
    assert f"invalid rows:   {invalid:,}" in human.stdout
    engine.dispose()


def test_status_on_postgres_reads_runs_and_the_sensor_from_the_instance(
    tmp_path: Path, postgres_engine: Engine
):
    bucket = LocalBucket(tmp_path / "bucket")
    bucket.put("shop_2026-11-01T06-00-00.csv", sample_csv(300, seed=3))
    bucket.put("empty.csv", b"")
    home = tmp_path / "dagster_home"
    home.mkdir()
    url = postgres_engine.url.render_as_string(hide_password=False)
    target = ("--database-url", url)
    environment = {"DAGSTER_HOME": str(home)}
    ingested = cli("ingest", "--json", "--bucket", bucket.url, *target, env=environment)
    assert ingested.returncode == 0, ingested.stderr
    statuses, items, invalid = database_counts(postgres_engine)

    status = json_output(cli("status", "--json", *target, env=environment))
    assert (status["files"]["completed"], status["files"]["rejected"]) == (1, 1)
    assert status["files"]["completed"] == statuses["completed"]
    assert (status["catalog_items"], status["invalid_rows"]) == (items, invalid)
    assert status["database"] == postgres_engine.url.render_as_string(hide_password=True)
    partitions = status["partitions"]
    assert partitions["source"] == "dagster" and partitions["count"] == 2
    assert {entry["object_key"]: entry["outcome"] for entry in partitions["latest"]} == {
        "shop_2026-11-01T06-00-00.csv": "success",
        "empty.csv": "success",  # a rejected file is a successful run
    }
    # The instance is there, but no daemon ran the sensor: no tick yet.
    assert status["sensor"] == {"name": "new_csv_objects_sensor", "state": None, "last_tick": None}


def test_status_failed_lists_a_failed_file_with_its_reason_and_retry_command(tmp_path: Path):
    key = "shop_2026-11-01T06-00-00.csv"
    bucket = LocalBucket(tmp_path / "bucket")
    bucket.put(key, sample_csv(50, seed=4))
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    target = ("--bucket", bucket.url, "--database-url", url)
    engine = make_engine(url)
    assert cli("db", "upgrade", "--database-url", url).returncode == 0
    hold_ingest_lease(engine, key)  # its run fails for real
    failed = cli("ingest", "--json", *target, env=NO_INSTANCE)
    assert failed.returncode == 1

    listing = json_output(
        cli("status", "--failed", "--json", "--database-url", url, env=NO_INSTANCE)
    )
    assert listing["failed"] == 1
    (entry,) = listing["files"]
    assert entry["object_key"] == key
    assert "already being ingested" in entry["reason"]
    assert entry["retry"] == f"catalog-pipeline repair {key}"
    human = cli("status", "--failed", "--database-url", url, env=NO_INSTANCE)
    assert "1 failed file:" in human.stdout
    assert f"retry:  catalog-pipeline repair {key}" in human.stdout
    summary = json_output(cli("status", "--json", "--database-url", url, env=NO_INSTANCE))
    assert summary["files"]["failed"] == 1

    # The command it gives, run once the cause is gone, repairs the file.
    with engine.begin() as connection:
        connection.execute(ingest_leases.delete())
    command, arguments = entry["retry"].split(" ", 1)
    assert command == "catalog-pipeline"
    repaired = cli(*arguments.split(), *target, env=NO_INSTANCE)
    assert repaired.returncode == 0, repaired.stderr
    after = json_output(cli("status", "--failed", "--json", "--database-url", url, env=NO_INSTANCE))
    assert after == {"failed": 0, "files": []}
    engine.dispose()


@pytest.mark.parametrize(
    "command",
    [
        ("status",),
        ("status", "--failed"),
        ("classify",),
        ("playcounts", "backfill", "--dry-run"),
        ("retention", "--dry-run"),
    ],
)
def test_an_unusable_database_url_is_exit_2_with_a_sentence(tmp_path: Path, command):
    arguments = (*command, "--database-url", "nosuchdb://u:secretpw@host/db")
    as_json = cli(*arguments, "--json", cwd=tmp_path, env=NO_INSTANCE)
    assert as_json.returncode == 2
    error = json_output(as_json)["error"]
    assert error.startswith("database URL 'nosuchdb://u:***@host/db' is not usable")
    assert "Traceback" not in as_json.stderr and "secretpw" not in as_json.stderr
    human = cli(*arguments, cwd=tmp_path, env=NO_INSTANCE)
    assert human.returncode == 2 and human.stdout == ""
    assert human.stderr.startswith(f"catalog-pipeline: {error}\n")
    assert "Traceback" not in human.stderr


def test_a_database_that_does_not_exist_fails_at_once(tmp_path: Path, postgres_admin_url: str):
    url = make_url(postgres_admin_url).set(database="no_such_catalog")
    result = cli(
        "status",
        "--json",
        "--database-url",
        url.render_as_string(hide_password=False),
        cwd=tmp_path,
        env={**NO_INSTANCE, "CATALOG_RETRY_BUDGET_S": "300"},
        timeout=90,
    )
    assert result.returncode == 2
    assert 'database "no_such_catalog" does not exist' in json_output(result)["error"]
    assert "Traceback" not in result.stderr
