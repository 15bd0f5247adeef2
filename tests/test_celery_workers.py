"""Scale-out on Celery (`CATALOG_EXECUTOR=celery`): real Redis (Debian's `redis-server`
on loopback, one per test), real `catalog-pipeline worker` processes, a PostgreSQL
catalog, and `catalog-pipeline ingest` as the orchestrator. Nothing is mocked: the steps
travel through the broker, run in the workers' pool processes, pass their outputs through
the catalog database (`step_outputs`), and report back through the result backend.

- two workers share one multi-chunk file's chunk steps, and the catalog ends exactly as a
  single-process ingest of the same file leaves it;
- a worker killed with SIGKILL mid-step (its whole process group: the machine is gone)
  never leaves the run hanging: the step goes back to the queue, the other worker runs it
  after the visibility timeout, and the file completes with the same catalog;
- a pool process killed mid-step is replaced and the step runs again at once;
- a step that outlives the visibility timeout is delivered twice and runs twice, and the
  catalog is still the same (chunk upserts and finalize are idempotent);
- a step past its deadline fails the run and the file, with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from benchmarks.ingest import start_redis
from catalog_pipeline.core.bucket import LocalBucket
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.engine import make_engine
from tests.conftest import IN_CI
from tests.helpers import content_dump

pytestmark = pytest.mark.slow

KEY = "shop_2026-11-08T06-00-00.csv"
ROWS = 40_000  # about 50 MB
CHUNK_BYTES = 8 * 1024 * 1024  # 7 chunk steps of about half a second each
CHUNKS = 7
RUN_TIMEOUT = 240


@pytest.fixture
def redis_url(tmp_path: Path):
    """A Redis server of this test's own on loopback (no persistence), stopped at the end."""
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("no redis-server: .ci/run installs it (apt-get install redis-server)")
        pytest.skip("no redis-server (apt-get install redis-server)")
    process, url = start_redis(tmp_path)
    yield url
    process.kill()
    process.wait(timeout=10)


class Cluster:
    """Worker processes and the environment they share with the orchestrating CLI."""

    def __init__(self, tmp_path: Path, environment: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.environment = environment
        self.workers: dict[str, tuple[subprocess.Popen, Path]] = {}
        self.orchestrators: list[subprocess.Popen] = []

    def start_worker(self, name: str) -> None:
        log = self.tmp_path / f"{name}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "catalog_pipeline.cli", "worker", "--name", name,
             "--concurrency", "1"],
            env=self.environment,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the pool child goes with it
        )  # fmt: skip
        self.workers[name] = (process, log)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        for name, (process, _) in self.workers.items():
            while f"{name}@" not in self.log(name) or " ready." not in self.log(name):
                assert process.poll() is None, f"worker {name} exited:\n{self.log(name)}"
                assert time.monotonic() < deadline, f"worker {name} not ready:\n{self.log(name)}"
                time.sleep(0.1)

    def log(self, name: str) -> str:
        return self.workers[name][1].read_text(errors="replace")

    def steps_run(self, name: str) -> list[str]:
        return re.findall(r"running step (\S+) of run", self.log(name))

    def kill(self, name: str) -> None:
        process, _ = self.workers[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        for orchestrator in self.orchestrators:  # a failed test leaves no run behind
            if orchestrator.poll() is None:
                orchestrator.kill()
                orchestrator.wait(timeout=10)
        for process, _ in self.workers.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in self.workers.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)

    def ingest(self, **extra) -> subprocess.Popen:
        self.orchestrators.append(
            subprocess.Popen(
                [sys.executable, "-m", "catalog_pipeline.cli", "ingest", "--json"],
                env={**self.environment, **extra},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        return self.orchestrators[-1]


def finished(process: subprocess.Popen, timeout: float = RUN_TIMEOUT) -> dict:
    """The CLI's JSON result; the run must end (never hang) within `timeout`."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the ingest did not end within {timeout} s:\n{err[-3000:]}")
    assert process.returncode == 0, err[-3000:]
    return json.loads(out)


@pytest.fixture(scope="module")
def scrape() -> bytes:
    return sample_csv(ROWS, seed=11)


def environment(tmp_path: Path, bucket: LocalBucket, database: str, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CATALOG_", "DAGSTER_HOME"))}
    return {
        **env,
        "CATALOG_BUCKET_URL": bucket.url,
        "CATALOG_DATABASE_URL": database,
        "CATALOG_CHUNK_BYTES": str(CHUNK_BYTES),
        **extra,
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, scrape: bytes) -> dict:
    """The same file ingested by the default executor (no Celery), on SQLite; once for
    every test here."""
    folder = tmp_path_factory.mktemp("reference")
    bucket = LocalBucket(folder / "bucket")
    bucket.put(KEY, scrape)
    database = f"sqlite:///{folder / 'catalog.sqlite'}"
    result = subprocess.run(
        [sys.executable, "-m", "catalog_pipeline.cli", "ingest", "--json"],
        env=environment(folder, bucket, database),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    engine = make_engine(database)
    try:
        return {"cli": json.loads(result.stdout)["files"], "catalog": content_dump(engine)}
    finally:
        engine.dispose()


def make_cluster(tmp_path: Path, redis_url: str, postgres_engine, scrape: bytes, **settings):
    """The scrape in a local bucket, and workers' environment: Celery on `redis_url`, the
    PostgreSQL catalog, and `settings` (CATALOG_CELERY_*)."""
    bucket = LocalBucket(tmp_path / "bucket")
    bucket.put(KEY, scrape)
    database = postgres_engine.url.render_as_string(hide_password=False)
    return Cluster(
        tmp_path,
        environment(
            tmp_path,
            bucket,
            database,
            CATALOG_EXECUTOR="celery",
            CATALOG_CELERY_BROKER_URL=redis_url,
            **settings,
        ),
    )


@pytest.fixture
def cluster(tmp_path: Path, redis_url: str, postgres_engine, scrape: bytes):
    nodes = make_cluster(
        tmp_path, redis_url, postgres_engine, scrape, CATALOG_CELERY_VISIBILITY_TIMEOUT_SECONDS="8"
    )
    yield nodes
    nodes.stop()


def assert_same_catalog(cluster_result: dict, postgres_engine, reference: dict) -> None:
    assert cluster_result["files"] == reference["cli"]
    assert cluster_result["files"][0]["status"] == "completed"
    assert content_dump(postgres_engine) == reference["catalog"]


def test_two_workers_share_the_chunk_steps_and_the_catalog_equals_one_process(
    cluster: Cluster, postgres_engine, reference: dict
):
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    cluster.wait_ready()

    result = finished(cluster.ingest())

    assert_same_catalog(result, postgres_engine, reference)
    chunks = {
        name: [s for s in cluster.steps_run(name) if "process_chunk" in s] for name in ("w1", "w2")
    }
    assert chunks["w1"] and chunks["w2"], chunks  # both workers ran chunk steps
    assert sorted(chunks["w1"] + chunks["w2"]) == [
        f"catalog_ingest.process_chunk[chunk_{index:05d}]" for index in range(CHUNKS)
    ]  # each exactly once


def test_a_worker_killed_mid_step_never_hangs_the_run_and_its_step_is_redelivered(
    cluster: Cluster, postgres_engine, reference: dict
):
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    cluster.wait_ready()
    ingest = cluster.ingest()

    # Kill w1 (main process and pool child) while it runs a chunk step.
    killed_step = running_chunk_step(cluster, "w1", ingest)
    cluster.kill("w1")

    result = finished(ingest)

    assert_same_catalog(result, postgres_engine, reference)
    assert killed_step in cluster.steps_run("w2"), (killed_step, cluster.log("w2"))


def test_a_pool_process_killed_mid_step_is_replaced_and_its_step_runs_again(
    cluster: Cluster, postgres_engine, reference: dict
):
    """The pool process running a step dies (SIGKILL, the OOM killer) while its worker
    lives: Celery would mark the task failed with `WorkerLostError`, which no op
    RetryPolicy sees; with `task_reject_on_worker_lost` the step goes back to the queue at
    once and runs again in the worker's new pool process."""
    cluster.start_worker("w1")
    cluster.wait_ready()
    ingest = cluster.ingest()
    process, _ = cluster.workers["w1"]
    killed_step = running_chunk_step(cluster, "w1", ingest)
    (child,) = pool_processes(process.pid)
    os.kill(child, signal.SIGKILL)

    result = finished(ingest)

    assert_same_catalog(result, postgres_engine, reference)
    assert cluster.steps_run("w1").count(killed_step) == 2, cluster.log("w1")
    assert "SIGKILL" in cluster.log("w1")  # Celery reports the lost pool process


def running_chunk_step(cluster: Cluster, name: str, ingest: subprocess.Popen) -> str:
    """Wait until the worker's last log line says it started a chunk step (a chunk step
    takes about half a second, the poll 20 ms); that step."""
    deadline = time.monotonic() + 120
    while True:
        lines = cluster.log(name).splitlines()
        started = re.search(
            r"running step (\S+process_chunk\S+) of run", lines[-1] if lines else ""
        )
        if started:
            return started.group(1)
        assert ingest.poll() is None, f"the ingest ended before {name} ran a chunk step"
        assert time.monotonic() < deadline, cluster.log(name)
        time.sleep(0.02)


def pool_processes(worker_pid: int) -> list[int]:
    """The worker's pool processes: its children (Linux /proc)."""
    children = Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def test_a_step_outliving_the_visibility_timeout_runs_twice_and_the_catalog_is_the_same(
    tmp_path: Path, redis_url: str, postgres_engine, scrape: bytes, reference: dict
):
    """A visibility timeout of 1 s, and chunk steps held for seconds: the test locks
    `catalog_items` against writes until chunk steps have waited on it for 4 s. Every
    chunk step taken meanwhile is delivered again while it waits, so the same chunk runs
    twice, on two workers at once or one after the other."""
    cluster = make_cluster(
        tmp_path, redis_url, postgres_engine, scrape, CATALOG_CELERY_VISIBILITY_TIMEOUT_SECONDS="1"
    )
    try:
        cluster.start_worker("w1")
        cluster.start_worker("w2")
        cluster.wait_ready()
        with postgres_engine.connect() as lock:
            lock.execute(text("LOCK TABLE catalog_items IN EXCLUSIVE MODE"))  # reads go on
            ingest = cluster.ingest()
            deadline = time.monotonic() + 60
            while not any(
                "process_chunk" in step for name in ("w1", "w2") for step in cluster.steps_run(name)
            ):
                assert ingest.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(4)
            lock.rollback()
        result = finished(ingest)
        steps = cluster.steps_run("w1") + cluster.steps_run("w2")
    finally:
        cluster.stop()

    assert_same_catalog(result, postgres_engine, reference)
    twice = {step for step in steps if "process_chunk" in step and steps.count(step) > 1}
    assert twice, steps  # the point of the test: chunk steps did run twice


def test_a_step_past_its_deadline_fails_the_run_and_the_file_with_the_reason(
    tmp_path: Path, redis_url: str, postgres_engine, scrape: bytes
):
    """`CATALOG_CELERY_STEP_TIMEOUT_SECONDS` is the backstop of a step that never ends (a
    worker dying on it again and again): here chunk steps wait on a locked table longer
    than a 3 s deadline, and the run ends `failed`, its file too, with the reason."""
    cluster = make_cluster(
        tmp_path, redis_url, postgres_engine, scrape, CATALOG_CELERY_STEP_TIMEOUT_SECONDS="3"
    )
    try:
        cluster.start_worker("w1")
        cluster.wait_ready()
        with postgres_engine.connect() as lock:
            lock.execute(text("LOCK TABLE catalog_items IN EXCLUSIVE MODE"))
            ingest = cluster.ingest()
            try:
                out, err = ingest.communicate(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                ingest.kill()
                pytest.fail(f"the ingest did not end within {RUN_TIMEOUT} s")
            finally:
                lock.rollback()
    finally:
        cluster.stop()

    assert ingest.returncode == 1, err[-3000:]
    (file,) = json.loads(out)["files"]
    assert file["status"] == "failed"
    assert "CATALOG_CELERY_STEP_TIMEOUT_SECONDS=3 s" in file["rejected_reason"], file
    assert "process_chunk" in file["rejected_reason"], file
    with postgres_engine.connect() as connection:
        status, error = connection.execute(
            text("SELECT status, error FROM source_files WHERE object_key = :key"), {"key": KEY}
        ).one()
    assert status == "failed" and "CATALOG_CELERY_STEP_TIMEOUT_SECONDS" in error
