"""A small run of the ingest benchmark so it never rots: every method loads the same file
and reports its numbers. No wall-clock assertions (the machines are noisy)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from benchmarks import ingest as benchmark
from tests.conftest import IN_CI

ROWS = 3000


def test_every_method_ingests_the_same_rows_and_the_report_has_the_ratios(
    tmp_path, capsys, postgres_database
):
    if shutil.which("redis-server") is None:  # the broker of `dagster_celery`
        if IN_CI:
            pytest.fail("no redis-server: .ci/run installs it")
        pytest.skip("no redis-server (apt-get install redis-server)")
    code = benchmark.main(
        [
            "--rows",
            str(ROWS),
            "--sensor-objects",
            "250",
            "--chunk-bytes",
            str(1 << 20),
            "--database-url",
            postgres_database,
            "--workdir",
            str(tmp_path),
            "--json",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)

    assert report["raw_copy"]["rows"] == ROWS
    runs = report["raw_copy"]["runs_rows_per_s"]
    assert len(runs) == 3 and all(rate > 0 for rate in runs)  # either side of core, dagster
    assert min(runs) <= report["raw_copy"]["rows_per_s"] <= max(runs)
    core_reference = round((runs[0] + runs[1]) / 2)
    assert report["ratios"]["core/raw_copy"] == round(
        report["core"]["rows_per_s"] / core_reference, 3
    )
    valid = report["core"]["valid"]
    assert 0.9 * ROWS < valid < ROWS  # ~5 % invalid rows, a few duplicate SKUs
    assert report["core"]["rows"] == report["core"]["verified_row_count"] == ROWS
    for method in (
        "naive_pandas",
        "core_1_worker",
        "dagster",
        "dagster_1_worker",
        "dagster_celery",
        "sqlite",
    ):
        assert report[method]["valid"] == valid, method
    # Celery: every chunk step ran on one of the workers, one worker per core.
    assert len(report["dagster_celery"]["chunk_steps_per_worker"]) == report["cores"]
    assert sum(report["dagster_celery"]["chunk_steps_per_worker"]) >= 1
    # The re-run: the next scrape of the same source (the same valid rows, 5 % repriced).
    assert report["core_rerun"]["rows"] == ROWS
    assert report["core_rerun"]["valid"] == valid
    # dlt reads every record, keeps one row per SKU and validates nothing.
    for method in ("dlt", "dlt_rerun"):
        assert report[method]["rows"] == ROWS, method
        assert 0.9 * ROWS < report[method]["loaded"] < ROWS, method  # duplicates merged
        assert report[method]["load_path"].startswith("parquet, adbc_ingest"), method
    assert report["core"]["workers"] == report["dagster"]["workers"] == 2 or report["cores"] == 1
    assert report["core_1_worker"]["workers"] == 1
    assert report["dagster_1_worker"]["workers"] == 1
    assert report["dagster"]["chunk_step_peak_rss_mb"] > 0
    assert report["sensor"]["requested"] == 250
    assert report["planning_mb_per_s"] > 0
    assert set(report["ratios"]) == {
        "dagster/core",
        "core/dlt",
        "core/dlt_rerun",
        "dagster/dlt",
        "core/raw_copy",
        "dagster/raw_copy",
        "core/naive_pandas",
        "core/core_1_worker",
        "dagster/dagster_1_worker",
        "dagster_celery/dagster",
    }
    assert all(ratio > 0 for ratio in report["ratios"].values())


GRANDCHILD = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
print(child.pid, flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_descendants_are_children_and_their_children_as_a_scan_of_proc_finds_them():
    child = subprocess.Popen(
        [sys.executable, "-c", GRANDCHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        grandchild = int(child.stdout.readline())
        found = benchmark._descendants(os.getpid())
        assert {child.pid, grandchild} <= set(found)
        assert sorted(found) == sorted(benchmark._descendants_by_scan(os.getpid()))
    finally:
        child.stdin.close()
        child.wait(timeout=60)
