"""`dagster dev` for the browser test: started from the repository root in its own process
group, a small GraphQL client over urllib, and bounded waits that show the server's log
tail when they time out."""

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
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parents[1]
LOCATION = "catalog_pipeline"
STOP_GRACE_SECONDS = 20
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dagster_command() -> list[str]:
    """The `dagster` script of this interpreter's environment (`.venv/bin/dagster`)."""
    script = Path(sys.executable).parent / "dagster"
    return [str(script)] if script.exists() else [sys.executable, "-m", "dagster"]


class DagsterDev:
    """One `dagster dev` (webserver and daemon) on 127.0.0.1 and a free port."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "dagster-dev.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [*dagster_command(), "dev", "-p", str(self.port), "-h", "127.0.0.1"],
            cwd=REPO,
            env={**os.environ, **env, "DAGSTER_HOME": str(home)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as a whole
        )

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_for(
        self, predicate: Callable[[], T], what: str, timeout: float, interval: float = 1.0
    ) -> T:
        """Poll `predicate` until it returns something truthy; fail with the log tail when
        `dagster dev` exits or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(
                    f"dagster dev exited ({self.process.returncode}) while waiting for {what}; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                result = predicate()
            except (OSError, urllib.error.URLError):
                result = None
            if result:
                return result
            if time.monotonic() > deadline:
                pytest.fail(
                    f"timed out after {timeout:.0f} s waiting for {what}; "
                    f"dagster dev log tail:\n{self.log_tail()}"
                )
            time.sleep(interval)

    def server_answers(self) -> bool:
        with urllib.request.urlopen(f"{self.base_url}/server_info", timeout=5) as response:
            return response.status == 200

    def query(self, text: str, **variables) -> dict:
        body = json.dumps({"query": text, "variables": variables}).encode()
        request = urllib.request.Request(
            f"{self.base_url}/graphql", body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            payload = json.load(response)
        assert "errors" not in payload, payload
        return payload["data"]

    def sensor_status(self, name: str) -> str | None:
        """RUNNING or STOPPED once the code location has loaded the sensor, else None."""
        sensor = self.query(
            "query($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) { "
            "__typename ... on Sensor { sensorState { status } } } }",
            selector=sensor_selector(name),
        )["sensorOrError"]
        return sensor["sensorState"]["status"] if sensor["__typename"] == "Sensor" else None

    def start_sensor(self, name: str) -> None:
        started = self.query(
            "mutation($selector: SensorSelector!) { startSensor(sensorSelector: $selector) { "
            "__typename ... on Sensor { sensorState { status } } "
            "... on PythonError { message } } }",
            selector=sensor_selector(name),
        )["startSensor"]
        assert started.get("sensorState", {}).get("status") == "RUNNING", started

    def runs(self, tag_key: str, tag_value: str) -> list[dict]:
        return self.query(
            "query($key: String!, $value: String!) { runsOrError(filter: {tags: "
            "[{key: $key, value: $value}]}) { ... on Runs { results { runId status "
            "tags { key value } } } } }",
            key=tag_key,
            value=tag_value,
        )["runsOrError"]["results"]

    def backfill(self, backfill_id: str) -> dict:
        return self.query(
            "query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename "
            "... on PartitionBackfill { status partitionNames runs { runId status } } "
            "... on PythonError { message } } }",
            id=backfill_id,
        )["partitionBackfillOrError"]

    def should_show_community_modal(self) -> bool:
        return bool(self.query("{ shouldShowNux }")["shouldShowNux"])

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL to what is left after the grace time
        (code servers and run workers it started live in the same group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while time.monotonic() < deadline:
            self.process.poll()  # reap it, so that a finished group reads as gone
            if not _group_alive(self.process.pid):
                break
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sensor_selector(name: str) -> dict[str, str]:
    return {
        "repositoryLocationName": LOCATION,
        "repositoryName": "__repository__",
        "sensorName": name,
    }


def copy_instance_config(home: Path) -> None:
    """The repository's `dagster.yaml` (run launcher, run monitoring, concurrency) as the
    temporary instance's: it holds no paths, storage defaults to SQLite under `home`."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
