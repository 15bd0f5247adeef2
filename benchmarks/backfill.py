"""UI backfills against sensor runs: the same objects, the same instance config, under
`dagster dev`.

Two phases, each on a fresh Dagster instance (the repository's dagster.yaml) and a fresh
SQLite catalog:

- sensor: `new_csv_objects_sensor` finds the objects and requests one run per object;
- backfill: the sensor is stopped, the objects' partitions are added (as the sensor or
  the UI's "Add partition" would), and one backfill of all of them is launched with the
  UI's own GraphQL mutation (`launchPartitionBackfill`, what its button sends).

In both phases `catalog_automation_sensor` is stopped: the derived assets'
(classifications, embeddings, the quality audit) runs it would request after each
ingest are the same in both phases and would only double the time the benchmark takes.

Printed: runs per minute of each phase (first run start to last run end), the mean and
median run duration read from the instance, the demo's 2,000-row partition's run in
each phase, and the ratios backfill / sensor. Run from the repository root:

    python benchmarks/backfill.py --partitions 500
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import dagster as dg  # noqa: E402

from catalog_pipeline.assets.partitions import partition_key_for, source_csvs  # noqa: E402
from catalog_pipeline.core.samples import sample_csv  # noqa: E402
from tests.ui_support import DagsterDev, copy_instance_config, sensor_selector  # noqa: E402

SENSOR = "new_csv_objects_sensor"
AUTOMATION_SENSOR = "catalog_automation_sensor"
DEMO_KEY = "acme-outdoor_2026-11-01T06-00-00.csv"  # the demo's 2,000-row partition
ASSETS = [{"path": ["catalog_items"]}, {"path": ["invalid_item_logs"]}]
LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}"""
SENSOR_ID = """
query($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) { ... on Sensor { id } }
}"""
STOP_SENSOR = """
mutation($id: String!) {
  stopSensor(id: $id) { __typename ... on StopSensorMutationResult { instigationState { status } } }
}"""


def objects(count: int, rows: int) -> list[tuple[str, bytes]]:
    """`count` small scrapes of distinct sources, plus the demo's 2,000-row file."""
    small = [
        (f"shop-{number:04d}_2026-11-01T06-00-00.csv", sample_csv(rows, seed=number))
        for number in range(count - 1)
    ]
    return [(DEMO_KEY, sample_csv(2_000, seed=1, sku_prefix="ACME")), *small]


def ingest_runs(home: Path, partitions: set[str]) -> list[dg.RunRecord]:
    """The runs of the objects' partitions (the automation sensor's derived-asset runs,
    which follow in both phases alike, are left out)."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return [
            record
            for record in instance.get_run_records()
            if record.dagster_run.tags.get("dagster/partition") in partitions
        ]


def finished(home: Path, partitions: set[str]) -> list[dg.RunRecord] | None:
    records = ingest_runs(home, partitions)
    done = [record for record in records if record.dagster_run.is_finished]
    return done if len(done) >= len(partitions) else None


def summary(records: list[dg.RunRecord]) -> dict:
    durations = [record.end_time - record.start_time for record in records]
    first = min(record.start_time for record in records)
    last = max(record.end_time for record in records)
    demo = [
        record.end_time - record.start_time
        for record in records
        if record.dagster_run.tags.get("dagster/partition") == partition_key_for(DEMO_KEY)
    ]
    return {
        "runs": len(records),
        "failed": sum(1 for record in records if not record.dagster_run.is_success),
        "runs_per_minute": round(len(records) / (last - first) * 60, 2),
        "mean_run_seconds": round(statistics.fmean(durations), 3),
        "median_run_seconds": round(statistics.median(durations), 3),
        "demo_run_seconds": round(demo[0], 3) if demo else None,
    }


def stop_sensor(dev: DagsterDev, name: str) -> None:
    sensor_id = dev.query(SENSOR_ID, selector=sensor_selector(name))["sensorOrError"]
    stopped = dev.query(STOP_SENSOR, id=sensor_id["id"])["stopSensor"]
    if stopped.get("instigationState", {}).get("status") != "STOPPED":
        raise RuntimeError(f"{name} was not stopped: {stopped}")


def phase(kind: str, workdir: Path, payload: list[tuple[str, bytes]], timeout: float) -> dict:
    home, bucket = workdir / kind / "dagster_home", workdir / kind / "bucket"
    home.mkdir(parents=True)
    bucket.mkdir(parents=True)
    copy_instance_config(home)
    dev = DagsterDev(
        home,
        {
            "CATALOG_BUCKET_URL": bucket.as_uri(),
            "CATALOG_DATABASE_URL": f"sqlite:///{workdir / kind / 'catalog.sqlite'}",
            "CATALOG_SENSOR_INTERVAL_SECONDS": "5",
        },
    )
    try:
        dev.wait_for(dev.server_answers, "the webserver", timeout=180)
        dev.wait_for(lambda: dev.sensor_status(SENSOR), "the code location", timeout=180)
        stop_sensor(dev, AUTOMATION_SENSOR)
        if kind == "backfill":
            stop_sensor(dev, SENSOR)
        for key, data in payload:
            (bucket / key).write_bytes(data)
        if kind == "backfill":
            partitions = [partition_key_for(key) for key, _ in payload]
            with dg.DagsterInstance.from_config(str(home)) as instance:
                instance.add_dynamic_partitions(source_csvs.name, partitions)
            launched = dev.query(
                LAUNCH_BACKFILL,
                params={"partitionNames": partitions, "assetSelection": ASSETS},
            )["launchPartitionBackfill"]
            if launched["__typename"] != "LaunchBackfillSuccess":
                raise RuntimeError(f"the backfill was not launched: {launched}")
        started = time.monotonic()
        partitions = {partition_key_for(key) for key, _ in payload}
        records = dev.wait_for(
            lambda: finished(home, partitions), f"{len(payload)} runs", timeout=timeout
        )
        print(f"{kind}: {len(records)} runs in {time.monotonic() - started:.0f} s", flush=True)
        return summary(records)
    finally:
        dev.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=500)
    parser.add_argument("--rows", type=int, default=200, help="rows of each small object")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per phase")
    parser.add_argument("--json", action="store_true")
    arguments = parser.parse_args(argv)
    payload = objects(arguments.partitions, arguments.rows)
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as workdir:
        results = {
            kind: phase(kind, Path(workdir), payload, arguments.timeout)
            for kind in ("sensor", "backfill")
        }
    sensor, backfill = results["sensor"], results["backfill"]
    results["ratios"] = {
        "backfill_runs_per_minute_vs_sensor": round(
            backfill["runs_per_minute"] / sensor["runs_per_minute"], 3
        ),
        "backfill_mean_run_vs_sensor": round(
            backfill["mean_run_seconds"] / sensor["mean_run_seconds"], 3
        ),
        "backfill_demo_run_vs_sensor": round(
            backfill["demo_run_seconds"] / sensor["demo_run_seconds"], 3
        )
        if backfill["demo_run_seconds"] and sensor["demo_run_seconds"]
        else None,
    }
    results["machine"] = {"cores": os.cpu_count(), "partitions": arguments.partitions}
    print(json.dumps(results, indent=None if arguments.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
