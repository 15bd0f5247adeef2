"""The `dg` CLI works from the repository root ([tool.dg] in pyproject.toml): it loads the
same definitions as `dagster dev`, and `dg launch` ingests a partition through
`catalog_executor` like every other launch path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
from sqlalchemy import select

from catalog_pipeline.assets.partitions import partition_key_for, source_csvs
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.tables import source_files
from catalog_pipeline.definitions import build_definitions

REPO = Path(__file__).resolve().parent.parent
KEY = "shop_2026-11-05T06-00-00.csv"


def dg_command(*arguments: str, env: dict | None = None) -> subprocess.CompletedProcess:
    venv = Path(sys.executable).parent.parent
    environment = {
        **os.environ,
        "VIRTUAL_ENV": str(venv),  # the project's venv is the active one: no warning
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        **(env or {}),
    }
    return subprocess.run(
        [str(venv / "bin" / "dg"), *arguments],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dg_check_defs_loads_the_code_location():
    result = dg_command("check", "defs")
    assert result.returncode == 0, result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_dg_list_defs_lists_what_the_definitions_hold():
    result = dg_command("list", "defs", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    definitions = build_definitions()
    assert {asset["asset_key"] for asset in listed["assets"]} == {
        key.to_user_string() for key in definitions.resolve_all_asset_keys()
    }
    assert {job["name"] for job in listed["jobs"]} == {job.name for job in definitions.jobs}
    assert {sensor["name"] for sensor in listed["sensors"]} == {
        sensor.name for sensor in definitions.sensors
    }
    assert {schedule["name"] for schedule in listed["schedules"]} == {
        schedule.name for schedule in definitions.schedules
    }


def test_dg_launch_ingests_a_partition_through_the_catalog_executor(tmp_path, sqlite_engine):
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    (bucket / KEY).write_bytes(sample_csv(40, seed=3))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    partition = partition_key_for(KEY)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(source_csvs.name, [partition])
    database_url = sqlite_engine.url.render_as_string(hide_password=False)
    result = dg_command(
        "launch",
        "--assets",
        "catalog_items,invalid_item_logs",
        "--partition",
        partition,
        env={
            "DAGSTER_HOME": str(home),
            "CATALOG_BUCKET_URL": bucket.as_uri(),
            "CATALOG_DATABASE_URL": database_url,
        },
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        assert run.is_success and run.tags["dagster/partition"] == partition
        decisions = [
            entry.dagster_event.message
            for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
            if (entry.dagster_event.message or "").startswith("catalog_executor:")
        ]
        assert decisions and decisions[0].startswith("catalog_executor: in-process")
    with sqlite_engine.connect() as connection:
        status = connection.scalar(
            select(source_files.c.status).where(source_files.c.object_key == KEY)
        )
    assert status == "completed"
