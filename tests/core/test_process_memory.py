"""Chunk work turns transparent huge pages off for its process, and long-lived workers keep
the memory they free (core.memory)."""

from __future__ import annotations

import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from catalog_pipeline.core.bucket import LocalBucket
from catalog_pipeline.core.memory import (
    PURGE_DELAY,
    TRANSPARENT_HUGEPAGES,
    WORKER_ALLOCATOR_SETTINGS,
    WORKER_PURGE_DELAY_MS,
    without_transparent_hugepages,
    worker_allocator_environment,
)
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.engine import make_engine, upgrade
from catalog_pipeline.ingest import ingest_object

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")

# Ingest one small object, then print the process's THP-disabled flag before and after
# (PR_SET_THP_DISABLE is 41, PR_GET_THP_DISABLE 42) and the rows ingested.
PROGRAM = """
import ctypes, sys, tempfile
from pathlib import Path
from catalog_pipeline.core.bucket import LocalBucket
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.engine import make_engine, upgrade
from catalog_pipeline.ingest import ingest_object

libc = ctypes.CDLL(None)
libc.prctl(41, 0, 0, 0, 0)  # the kernel's default, whatever the test process had set
before = libc.prctl(42, 0, 0, 0, 0)
folder = Path(tempfile.mkdtemp())
bucket = LocalBucket(folder / "bucket")
bucket.put("shop_2026-01-01T00-00-00.csv", sample_csv(50, seed=1))
engine = make_engine(f"sqlite:///{folder / 'c.sqlite'}")
upgrade(engine)
summary, _ = ingest_object(bucket, engine, "shop_2026-01-01T00-00-00.csv", 64 * 1024)
print(before, libc.prctl(42, 0, 0, 0, 0), summary.rows_total)
"""


def _flags(**env: str) -> list[str]:
    environment = {k: v for k, v in os.environ.items() if k != TRANSPARENT_HUGEPAGES}
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        env={**environment, **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout.split()


def test_ingesting_a_chunk_turns_transparent_huge_pages_off():
    assert _flags() == ["0", "1", "50"]


def test_the_setting_keeps_the_kernel_default():
    assert _flags(**{TRANSPARENT_HUGEPAGES: "on"}) == ["0", "0", "50"]


def _environment_values(names: list[str]) -> list[str | None]:
    return [os.environ.get(name) for name in names]


def _spawned(function, *arguments):
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(function, *arguments).result(timeout=120)


def _spawned_value(name: str) -> str | None:
    return _spawned(_environment_values, [name])[0]


def test_workers_started_in_the_block_keep_freed_memory_and_the_caller_is_unchanged(
    monkeypatch,
):
    names = list(WORKER_ALLOCATOR_SETTINGS)
    for name in names:
        monkeypatch.delenv(name, raising=False)
    with worker_allocator_environment():
        inside = _spawned(_environment_values, names)
    assert inside == list(WORKER_ALLOCATOR_SETTINGS.values())
    assert inside[names.index(PURGE_DELAY)] == WORKER_PURGE_DELAY_MS
    assert not any(name in os.environ for name in names)
    assert _spawned(_environment_values, names) == [None] * len(names)


def test_a_purge_delay_the_user_set_is_kept(monkeypatch):
    monkeypatch.setenv(PURGE_DELAY, "250")
    with worker_allocator_environment():
        assert _spawned_value(PURGE_DELAY) == "250"
    assert os.environ[PURGE_DELAY] == "250"


def _faults_reading_twice(path: str) -> int:
    """Page faults of reading `path` into a `bytes` a second time, after the first was
    freed (as a worker reads chunk after chunk); huge pages off, as in chunk work."""
    without_transparent_hugepages()
    with open(path, "rb") as handle:
        data = handle.read()
    del data
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    with open(path, "rb") as handle:
        handle.read()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_workers_reuse_the_memory_of_the_previous_chunks_bytes(tmp_path, monkeypatch):
    for name in WORKER_ALLOCATOR_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "chunk.bin"
    path.write_bytes(os.urandom(1 << 20) * 48)  # 48 MiB: over glibc's largest mmap threshold
    pages = (48 << 20) // resource.getpagesize()
    assert _spawned(_faults_reading_twice, str(path)) > pages * 0.9  # a fresh mapping each time
    with worker_allocator_environment():
        assert _spawned(_faults_reading_twice, str(path)) < pages * 0.1


def _children_environments() -> list[dict[str, str]]:
    """The environments the current process's children started with (/proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent != os.getpid():
                continue
            raw = (entry / "environ").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        found.append({key.decode(): value.decode(errors="replace") for key, value in pairs})
    return found


def test_the_core_paths_worker_processes_start_with_the_purge_delay(tmp_path, monkeypatch):
    monkeypatch.delenv(PURGE_DELAY, raising=False)
    bucket = LocalBucket(tmp_path / "bucket")
    key = "shop_2026-01-01T00-00-00.csv"
    bucket.put(key, sample_csv(400, seed=3))
    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    upgrade(engine)
    seen: list[str | None] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.extend(env.get(PURGE_DELAY) for env in _children_environments())
            stop.wait(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        summary, _ = ingest_object(bucket, engine, key, 4096, workers=2)
    finally:
        stop.set()
        watcher.join()
    assert summary.rows_total == 400
    assert WORKER_PURGE_DELAY_MS in seen
    assert PURGE_DELAY not in os.environ
