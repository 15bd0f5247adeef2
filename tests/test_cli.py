"""`catalog-pipeline` as a user runs it: a subprocess with real buckets and databases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy.engine import make_url

from catalog_pipeline.core.bucket import S3Bucket
from catalog_pipeline.core.samples import sample_csv
from tests.helpers import dump

SUMMARY_KEYS = {
    "delisted_items",
    "delisting_held",
    "object_key",
    "status",
    "rows_total",
    "rows_valid",
    "rows_invalid",
    "verified_row_count",
    "rejected_reason",
}


def cli(*arguments: str, cwd=None, env=None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "catalog_pipeline.cli", *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def json_output(result: subprocess.CompletedProcess) -> dict:
    """No traceback on stderr, and exactly one line on stdout: its JSON object."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    (line,) = result.stdout.splitlines()
    return json.loads(line)


def test_ingest_json_on_postgres_and_s3_reports_every_file_and_reruns_as_noop(
    s3_server, postgres_database, postgres_engine
):
    bucket = S3Bucket("cli-bucket", "drops/", endpoint_url=s3_server)
    bucket.client.create_bucket(Bucket="cli-bucket")
    bucket.put("drops/shop_2026-11-01T06-00-00.csv", sample_csv(400, seed=5))
    bucket.put("drops/empty.csv", b"")
    bucket.put("drops/readme.md", b"not a csv")
    arguments = (
        "ingest",
        "--json",
        "--bucket",
        "s3://cli-bucket/drops/",
        "--database-url",
        postgres_database,
        "--chunk-bytes",
        "65536",
    )
    environment = {"CATALOG_S3_ENDPOINT_URL": s3_server}
    first = cli(*arguments, env=environment)
    assert first.returncode == 0, first.stderr
    files = {entry["object_key"]: entry for entry in json.loads(first.stdout)["files"]}
    assert set(files) == {"drops/shop_2026-11-01T06-00-00.csv", "drops/empty.csv"}
    assert all(set(entry) == SUMMARY_KEYS for entry in files.values())
    shop = files["drops/shop_2026-11-01T06-00-00.csv"]
    assert shop["status"] == "completed" and shop["rows_total"] == 400
    assert shop["rows_valid"] + shop["rows_invalid"] == shop["verified_row_count"] == 400
    assert shop["rejected_reason"] is None
    empty = files["drops/empty.csv"]
    assert empty["status"] == "rejected" and "empty" in empty["rejected_reason"]

    before = dump(postgres_engine)
    second = cli(*arguments, env=environment)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == json.loads(first.stdout)
    assert dump(postgres_engine) == before


def test_demo_writes_samples_ingests_them_and_says_how_to_open_the_ui(tmp_path):
    from catalog_pipeline.db.engine import make_engine

    demo = ("demo", "--rows", "3000")
    result = cli(*demo, cwd=tmp_path, env={"DAGSTER_HOME": ""})
    assert result.returncode == 0, result.stderr
    assert "dg dev" in result.stdout
    assert "legacy-export_2026-11-21T06-00-00.csv              rejected" in result.stdout
    assert "bigbox_2026-11-20T06-00-00.csv" in result.stdout
    assert (tmp_path / "data" / "catalog.sqlite").exists()
    assert "[5/5]" in result.stderr  # per-file progress
    assert result.stderr.count("wrote ") == 6  # five scrapes and a README
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'catalog.sqlite'}")
    tables = dump(engine)
    assert tables["catalog_items"] and tables["invalid_item_logs"]

    # A second demo prints the same, writes no sample and changes no row.
    again = cli(*demo, cwd=tmp_path, env={"DAGSTER_HOME": ""})
    assert again.returncode == 0, again.stderr
    assert again.stdout == result.stdout
    assert "wrote " not in again.stderr
    assert dump(engine) == tables

    as_json = cli(*demo, "--json", cwd=tmp_path, env={"DAGSTER_HOME": ""})
    files = {f["object_key"]: f for f in json.loads(as_json.stdout)["files"]}
    statuses = {key: file["status"] for key, file in files.items()}
    assert statuses["legacy-export_2026-11-21T06-00-00.csv"] == "rejected"
    assert sorted(set(statuses.values())) == ["completed", "rejected"]
    printed = [line.split() for line in result.stdout.splitlines()]
    for key, file in files.items():  # the same numbers as the table printed above
        counts = (file["rows_total"], file["rows_valid"], file["rows_invalid"])
        assert [key, file["status"], *(f"{n:,}" for n in counts)] in printed
    assert dump(engine) == tables
    engine.dispose()


def test_db_upgrade_reports_the_revision(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    result = cli("db", "upgrade", "--database-url", url)
    assert result.returncode == 0, result.stderr
    from alembic.script import ScriptDirectory

    from catalog_pipeline.db.engine import MIGRATIONS

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert f"schema at revision {head}" in result.stdout


def _unusable(result: subprocess.CompletedProcess) -> str:
    """The checks every unusable-configuration run passes: exit 2, one JSON line on
    stdout, a sentence and no traceback on stderr; the JSON line's error."""
    assert result.returncode == 2, result.stderr
    (line,) = result.stdout.splitlines()
    summary = json.loads(line)
    assert summary["files"] == []
    assert result.stderr.startswith("catalog-pipeline: ")
    assert "Traceback" not in result.stderr
    return summary["error"]


def test_an_unusable_database_url_is_named_without_its_password(tmp_path):
    result = cli(
        "ingest",
        "--json",
        "--database-url",
        "postgres://u:secretpw@127.0.0.1/db",
        cwd=tmp_path,
        env={"DAGSTER_HOME": ""},
    )
    error = _unusable(result)
    assert "database URL 'postgres://u:***@127.0.0.1/db' is not usable" in error
    assert "secretpw" not in result.stdout and "secretpw" not in result.stderr


def test_an_unknown_database_fails_at_once_naming_it(tmp_path, postgres_admin_url):
    url = make_url(postgres_admin_url).set(database="no_such_db")
    started = time.monotonic()
    result = cli(
        "ingest",
        "--json",
        "--database-url",
        url.render_as_string(hide_password=False),
        cwd=tmp_path,
        env={"DAGSTER_HOME": "", "CATALOG_RETRY_BUDGET_S": "300"},
        timeout=90,  # retried for the budget, it would take 5 minutes
    )
    assert time.monotonic() - started < 60
    error = _unusable(result)
    assert 'database "no_such_db" does not exist' in error
    assert 'database "no_such_db" does not exist' in result.stderr
    assert "retry budget" not in result.stderr
    assert "database name" in result.stderr  # what to check


def test_a_large_file_forks_its_chunk_steps_without_dagster_home(tmp_path, request):
    # 300 KB in 64 KiB chunks: five chunks, more than catalog_executor runs in process.
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    (bucket / "shop_2026-11-01T06-00-00.csv").write_bytes(sample_csv(250, seed=31))
    target = ["--bucket", bucket.as_uri(), "--json"]
    # A short TMPDIR: the fork server's socket lives there, and a Unix socket's path is
    # limited to 107 bytes (pytest's tmp_path under xdist is longer).
    scratch = Path(tempfile.mkdtemp(prefix="cli-fork-"))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    # With JSON run logs, a forked step's process announces itself on stderr.
    environment = {"DAGSTER_HOME": "", "TMPDIR": str(scratch), "CATALOG_LOG_FORMAT": "json"}
    forked = cli(
        "ingest",
        *target,
        "--database-url",
        f"sqlite:///{tmp_path / 'forked.sqlite'}",
        "--chunk-bytes",
        "64KiB",
        cwd=tmp_path,
        env=environment,
    )
    in_process = cli(
        "ingest",
        *target,
        "--database-url",
        f"sqlite:///{tmp_path / 'in_process.sqlite'}",
        cwd=tmp_path,
        env=environment,
    )
    assert forked.returncode == 0 and in_process.returncode == 0, forked.stderr[-3000:]
    (forked_file,) = json_output(forked)["files"]
    (in_process_file,) = json_output(in_process)["files"]
    assert forked_file == in_process_file
    assert forked_file["status"] == "completed" and forked_file["rows_total"] == 250
    forked_step = 'Executing step "catalog_ingest.process_chunk[chunk_00004]" in subprocess'
    assert forked_step in forked.stderr
    assert "in subprocess" not in in_process.stderr
    # Without JSON logs, the forked steps' Dagster lines stay off the user's terminal.
    quiet = cli(
        "ingest",
        *target,
        "--database-url",
        f"sqlite:///{tmp_path / 'quiet.sqlite'}",
        "--chunk-bytes",
        "64KiB",
        cwd=tmp_path,
        env={**environment, "CATALOG_LOG_FORMAT": ""},
    )
    assert json_output(quiet)["files"] == [forked_file]
    assert quiet.stderr == "", quiet.stderr[-3000:]
    # The run went to a scratch instance (its chunk steps were forked from it), which is
    # gone once the command exits; the small default-chunk run made none.
    assert not [p for p in scratch.iterdir() if p.name.startswith("catalog-pipeline-instance-")]
