"""`catalog-pipeline` as a user runs it: a subprocess with real buckets and databases."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from catalog_pipeline.core.bucket import S3Bucket
from catalog_pipeline.core.samples import sample_csv
from tests.helpers import dump

SUMMARY_KEYS = {
    "object_key",
    "status",
    "rows_total",
    "rows_valid",
    "rows_invalid",
    "verified_row_count",
    "rejected_reason",
}


def cli(*arguments: str, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "catalog_pipeline.cli", *arguments],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


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
    result = cli("demo", "--rows", "3000", cwd=tmp_path, env={"DAGSTER_HOME": ""})
    assert result.returncode == 0, result.stderr
    assert "dagster dev" in result.stdout
    assert "legacy-export_2026-11-21T06-00-00.csv              rejected" in result.stdout
    assert "bigbox_2026-11-20T06-00-00.csv" in result.stdout
    assert (tmp_path / "data" / "catalog.sqlite").exists()
    assert "[5/5]" in result.stderr  # per-file progress
    again = cli("demo", "--rows", "3000", "--json", cwd=tmp_path, env={"DAGSTER_HOME": ""})
    statuses = {f["object_key"]: f["status"] for f in json.loads(again.stdout)["files"]}
    assert statuses["legacy-export_2026-11-21T06-00-00.csv"] == "rejected"
    assert sorted(set(statuses.values())) == ["completed", "rejected"]


def test_db_upgrade_reports_the_revision(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"
    result = cli("db", "upgrade", "--database-url", url)
    assert result.returncode == 0, result.stderr
    from alembic.script import ScriptDirectory

    from catalog_pipeline.db.engine import MIGRATIONS

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert f"schema at revision {head}" in result.stdout
