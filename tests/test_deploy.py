"""The production instance config (deploy/dagster.yaml) against the test PostgreSQL."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import dagster as dg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from catalog_pipeline.assets.partitions import partition_key_for, source_csvs
from catalog_pipeline.core.samples import HEADER, sample_csv
from catalog_pipeline.db.engine import make_engine
from catalog_pipeline.executor import MULTIPROCESS, execution_run_config
from tests.dagster_jobs import faulty_ingest_job
from tests.helpers import content_dump

REPO = Path(__file__).resolve().parents[1]
KEY = "prod_2026-11-22T06-00-00.csv"
GOOD_ROWS = sample_csv(200, seed=8, invalid_rate=0.0)  # every row valid, some SKUs repeated


def broken_rows() -> bytes:
    """Four rows, each broken in one known way (in `HEADER` order, 13 fields)."""
    base = ["INV-1", "Broken thing", "", "", "", "", "", "https://shop.example.com/p/1"]
    base += [""] * (len(HEADER) - len(base))
    rows = [
        ["INV-1", *base[1:7], "javascript:alert(1)", *base[8:]],  # not an http(s) URL
        ["bad sku with spaces", *base[1:]],
        ["INV-3", "", *base[2:]],  # no name
        ["INV-4", *base[1:], "extra column"],
    ]
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode()


def distinct_skus(data: bytes) -> int:
    return len({row[0] for row in list(csv.reader(io.StringIO(data.decode())))[1:]})


def test_production_instance_on_postgres_loads_and_completes_an_ingest_run(
    tmp_path, monkeypatch, postgres_admin_url, postgres_database, postgres_engine, local_bucket
):
    admin = make_engine(postgres_admin_url).execution_options(isolation_level="AUTOCOMMIT")
    storage = f"{make_url(postgres_database).database}_dagster"
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{storage}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{storage}"'))
    admin.dispose()
    storage_url = make_url(postgres_admin_url).set(
        drivername="postgresql+psycopg2", database=storage
    )
    monkeypatch.setenv("DAGSTER_PG_URL", storage_url.render_as_string(hide_password=False))

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    local_bucket.put(KEY, GOOD_ROWS + broken_rows())
    monkeypatch.setenv("CATALOG_TEST_BUCKET_URL", local_bucket.url)
    monkeypatch.setenv("CATALOG_TEST_DATABASE_URL", postgres_database)
    monkeypatch.setenv("CATALOG_TEST_CHUNK_BYTES", "65536")

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert instance.run_retries_enabled and instance.run_monitoring_enabled
        instance.add_dynamic_partitions(source_csvs.name, [partition_key_for(KEY)])
        result = dg.execute_job(
            dg.reconstructable(faulty_ingest_job),
            instance,
            run_config=execution_run_config(MULTIPROCESS, max_concurrent=2),
            tags={"dagster/partition": partition_key_for(KEY)},
        )
        assert result.success
        stored = instance.get_run_by_id(result.run_id)
        assert stored is not None and stored.is_success
        materialized = instance.get_latest_materialization_event(dg.AssetKey("catalog_items"))
        assert materialized is not None and materialized.run_id == result.run_id
    tables = content_dump(postgres_engine)
    # Expected values from the file itself: 200 valid rows, 4 broken ones, and one
    # catalog item per distinct SKU among the valid rows.
    assert tables["files"] == [(KEY, "completed", 204, 200, 4, 204)]
    assert len(tables["items"]) == distinct_skus(GOOD_ROWS) < 200
    broken = broken_rows().splitlines(keepends=True)
    offsets = [len(GOOD_ROWS) + sum(map(len, broken[:n])) for n in range(len(broken))]
    assert [byte_offset for _, _, byte_offset, _, _ in tables["invalid"]] == offsets
    assert len(tables["provenance"]) == distinct_skus(GOOD_ROWS)
