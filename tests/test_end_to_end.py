"""End to end with the real daemon and webserver (`dagster dev` on 127.0.0.1, a temp
DAGSTER_HOME): sensor-triggered runs, a partition backfill and a single-partition run
launched through the webserver's GraphQL API, the catalog audit the automation sensor
launches once the ingests settle, and the classification runs that follow each ingest on
their own (the `openai` classifier against a local chat-completions server), one step at a
time (pool `classifier`, limit 1), never paying for an item twice."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

from catalog_pipeline.assets.partitions import partition_key_for
from catalog_pipeline.core.bucket import LocalBucket
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.engine import make_engine
from catalog_pipeline.db.tables import source_files
from tests.chat_server import ChatServer
from tests.helpers import dump

REPO = Path(__file__).resolve().parents[1]
CHUNK_BYTES = 64 * 1024
FILES = {
    "alpha_2026-11-01T06-00-00.csv": sample_csv(60, seed=21, sku_prefix="A"),
    "beta, [weekly]_2026-11-02T06-00-00.csv": sample_csv(80, seed=22, sku_prefix="B"),
    # Over three chunks: the sensor asks for the multiprocess executor for this one.
    "big/gamma_2026-11-03T06-00-00.csv": sample_csv(300, seed=23, sku_prefix="G"),
}
TIMEOUT = 240
# The model server holds its first request until a second one arrives (or this long), so
# two classification steps that are allowed to overlap certainly do.
CLASSIFIER_HOLD = 15.0


class Dagster:
    """A `dagster dev` process and a small GraphQL client for it."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/graphql"
        self.log = (home / "dagster-dev.log").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-w",
                str(REPO / "workspace.yaml"),
            ],
            cwd=REPO,
            env={**os.environ, **env, "DAGSTER_HOME": str(home)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole by PID
        )

    def query(self, text: str, **variables) -> dict:
        body = json.dumps({"query": text, "variables": variables}).encode()
        request = urllib.request.Request(
            self.url, body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.load(response)
        assert "errors" not in payload, payload
        return payload["data"]

    def wait_ready(self) -> None:
        def loaded():
            data = self.query(
                "{ workspaceOrError { ... on Workspace { locationEntries { name "
                "locationOrLoadError { __typename } } } } }"
            )
            entries = data["workspaceOrError"]["locationEntries"]
            return (
                entries and entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation"
            )

        wait_for(loaded, "the code location to load", self)

    def sensor_ticked(self, name: str) -> bool:
        data = self.query(
            "query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) { "
            "... on Sensor { sensorState { ticks(limit: 1) { status } } } } }",
            selector={
                "repositoryLocationName": "catalog_pipeline",
                "repositoryName": "__repository__",
                "sensorName": name,
            },
        )["sensorOrError"]
        return bool(data.get("sensorState", {}).get("ticks"))

    def runs(self, tag_key: str, tag_value: str) -> list[dict]:
        data = self.query(
            "query($key: String!, $value: String!) { runsOrError(filter: {tags: "
            "[{key: $key, value: $value}]}) { ... on Runs { results { runId status "
            "tags { key value } } } } }",
            key=tag_key,
            value=tag_value,
        )
        return data["runsOrError"]["results"]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=60)
        # Code servers and run workers it started may outlive it until their heartbeat
        # times out: stop whatever is left of its process group now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.log.close()


def wait_for(predicate, what: str, dagster: Dagster, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dagster.process.poll() is not None:
            pytest.fail(f"dagster dev exited while waiting for {what}")
        try:
            result = predicate()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(1)
    log = (Path(dagster.log.name)).read_text()[-4000:]
    pytest.fail(f"timed out waiting for {what}; dagster dev log tail:\n{log}")


def materialization_run(dagster: Dagster, asset: str) -> str | None:
    data = dagster.query(
        "query($path: [String!]!) { assetOrError(assetKey: {path: $path}) { ... on Asset { "
        "assetMaterializations(limit: 1) { runId } } } }",
        path=[asset],
    )["assetOrError"]
    materializations = data.get("assetMaterializations") or []
    return materializations[0]["runId"] if materializations else None


def materializations(dagster: Dagster, asset: str) -> list[dict]:
    data = dagster.query(
        "query($path: [String!]!) { assetOrError(assetKey: {path: $path}) { ... on Asset { "
        "assetMaterializations { runId partition } } } }",
        path=[asset],
    )["assetOrError"]
    return data.get("assetMaterializations") or []


def step_windows(dagster: Dagster, run_id: str, step_key: str) -> list[tuple[float, float]]:
    stats = dagster.query(
        "query($id: ID!) { runOrError(runId: $id) { ... on Run { stepStats { stepKey "
        "startTime endTime } } } }",
        id=run_id,
    )["runOrError"]["stepStats"]
    return [(s["startTime"], s["endTime"]) for s in stats if s["stepKey"] == step_key]


def run_status(dagster: Dagster, run_id: str) -> str:
    return dagster.query(
        "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", id=run_id
    )["runOrError"]["status"]


def finished(runs: list[dict], count: int) -> bool:
    statuses = [run["status"] for run in runs]
    assert "FAILURE" not in statuses and "CANCELED" not in statuses, runs
    return len(runs) == count and all(status == "SUCCESS" for status in statuses)


@pytest.mark.slow
def test_sensor_runs_backfill_and_single_partition_through_the_webserver(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    bucket = LocalBucket(tmp_path / "bucket")
    database = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    model = ChatServer(delay=0.1, hold_first=CLASSIFIER_HOLD).__enter__()
    dagster = Dagster(
        home,
        {
            "CATALOG_BUCKET_URL": bucket.url,
            "CATALOG_DATABASE_URL": database,
            "CATALOG_CHUNK_BYTES": str(CHUNK_BYTES),
            "CATALOG_SENSOR_INTERVAL_SECONDS": "1",
            "CATALOG_AUTOMATION_INTERVAL_SECONDS": "2",
            "CLASSIFIER": "openai",
            "CLASSIFIER_OPENAI_BASE_URL": model.base_url,
            "CLASSIFIER_OPENAI_MODEL": "e2e-model",
            "CLASSIFIER_OPENAI_API_KEY": "sk-e2e",
            "CLASSIFIER_BATCH_SIZE": "20",
        },
    )
    try:
        dagster.wait_ready()
        # Automation conditions observe from their first evaluation on: an ingest that
        # finished before it is history, not news (a new deployment classifies what is
        # already there with `reclassify_catalog_job`). So the files land after it.
        wait_for(
            lambda: dagster.sensor_ticked("catalog_automation_sensor"),
            "the automation sensor's first tick",
            dagster,
        )
        for key, data in FILES.items():
            bucket.put(key, data)
        bucket.put("zeta_empty.csv", b"")  # rejected by the sensor, which carries on

        sensor_runs = wait_for(
            lambda: (
                (runs := dagster.runs("dagster/sensor_name", "new_csv_objects_sensor"))
                and finished(runs, len(FILES))
                and runs
            ),
            "the sensor-triggered runs",
            dagster,
        )
        partitions = sorted(partition_key_for(key) for key in FILES)
        assert (
            sorted(
                next(t["value"] for t in run["tags"] if t["key"] == "dagster/partition")
                for run in sensor_runs
            )
            == partitions
        )
        engine = make_engine(database)
        with engine.connect() as connection:
            statuses = dict(
                connection.execute(select(source_files.c.object_key, source_files.c.status)).all()
            )
        assert statuses == {**dict.fromkeys(FILES, "completed"), "zeta_empty.csv": "rejected"}

        # Classification follows each ingest by itself (automation sensor), in runs of its
        # own, one step at a time across runs (pool `classifier`, limit 1).
        def all_classified():
            found = materializations(dagster, "item_classifications")
            return found if {m["partition"] for m in found} >= set(partitions) else None

        classified = wait_for(all_classified, "the classification runs", dagster)
        classification_runs = {m["runId"] for m in classified}
        assert not classification_runs & {run["runId"] for run in sensor_runs}
        wait_for(
            lambda: all(run_status(dagster, run) == "SUCCESS" for run in classification_runs),
            "the classification runs to succeed",
            dagster,
        )
        windows = sorted(
            window
            for run_id in classification_runs
            for window in step_windows(dagster, run_id, "item_classifications")
        )
        assert len(windows) == len(classification_runs) >= len(partitions)
        assert all(
            end <= next_start
            for (_, end), (next_start, _) in zip(windows, windows[1:], strict=False)
        )
        assert model.max_in_flight == 1
        pool = dagster.query(
            '{ instance { concurrencyLimit(concurrencyKey: "classifier") { limit '
            "usingDefaultLimit } } }"
        )["instance"]["concurrencyLimit"]
        assert pool == {"limit": 1, "usingDefaultLimit": False}
        catalog = dump(engine)
        assert len(catalog["catalog_items"]) > 300
        assert len(catalog["item_classifications"]) == len(catalog["catalog_items"])
        asked = sorted(item["id"] for item in model.items_asked())
        assert asked == sorted(row[0] for row in catalog["catalog_items"])  # each item once

        # The audit follows on its own once the ingests settle (automation sensor).
        audit_run = wait_for(
            lambda: materialization_run(dagster, "catalog_quality"), "the catalog audit", dagster
        )
        wait_for(lambda: run_status(dagster, audit_run) == "SUCCESS", "the audit run", dagster)

        launched = dagster.query(
            "mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: "
            "$params) { __typename ... on LaunchBackfillSuccess { backfillId } "
            "... on PythonError { message } } }",
            params={
                "partitionNames": partitions,
                "assetSelection": [{"path": ["catalog_items"]}, {"path": ["invalid_item_logs"]}],
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]

        def backfill_done():
            status = dagster.query(
                "query($id: String!) { partitionBackfillOrError(backfillId: $id) { "
                "... on PartitionBackfill { status } } }",
                id=backfill_id,
            )["partitionBackfillOrError"]["status"]
            assert status not in ("FAILED", "COMPLETED_FAILED", "CANCELED"), status
            return status in ("COMPLETED", "COMPLETED_SUCCESS")

        wait_for(backfill_done, "the backfill", dagster)
        assert finished(dagster.runs("dagster/backfill", backfill_id), len(FILES))
        assert dump(engine) == catalog  # a backfill of ingested files changes nothing

        single = dagster.query(
            "mutation($params: ExecutionParams!) { launchRun(executionParams: $params) { "
            "__typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } "
            "} }",
            params={
                "selector": {
                    "repositoryLocationName": "catalog_pipeline",
                    "repositoryName": "__repository__",
                    "jobName": "catalog_ingest_job",
                },
                "executionMetadata": {
                    "tags": [{"key": "dagster/partition", "value": partitions[0]}]
                },
            },
        )["launchRun"]
        assert single["__typename"] == "LaunchRunSuccess", single
        run_id = single["run"]["runId"]
        wait_for(
            lambda: run_status(dagster, run_id) == "SUCCESS", "the single-partition run", dagster
        )
        assert dump(engine) == catalog

        # The re-ingests were classified again by new runs (one per partition at least; a
        # partition re-ingested twice in a row may be classified once), which found nothing
        # changed: not one more item was sent to the model.
        def reclassified():
            runs = {m["runId"] for m in materializations(dagster, "item_classifications")}
            return len(runs) >= len(classification_runs) + len(partitions) and all(
                run_status(dagster, run) == "SUCCESS" for run in runs
            )

        wait_for(reclassified, "the classification runs after the re-ingests", dagster)
        assert len(model.items_asked()) == len(asked)
        assert dump(engine) == catalog
    finally:
        dagster.stop()
        model.__exit__(None, None, None)
