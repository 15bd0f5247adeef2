"""How a process that reads chunks gets its memory from the kernel.

A chunk step touches several hundred MB of memory once (the chunk, its Arrow columns, the
rows it sends) and, being a fresh process per step under Dagster, touches none of it
twice. Arrow's allocator (mimalloc) asks for transparent huge pages; with the kernel's
usual `defrag=madvise` setting a huge-page fault compacts memory to find 2 MiB of it and
zeroes all of it at once. Measured on the benchmark machine (first 64 MiB chunk of a fresh
process, 52,000 rows): reading and validating cost 27-30 µs a row with huge pages and
15 µs without, two thirds of it system time; a warm process is the same either way (11-12).
Huge pages pay off for long-lived processes that walk the same memory many times, which
is not what a chunk step does.

`CATALOG_TRANSPARENT_HUGEPAGES=on` keeps the kernel's default.

A worker process that reads chunk after chunk (the core path's process pool) is the
opposite case: mimalloc gives freed memory back to the kernel 10 ms after it is freed, so
every chunk faults its few hundred MB in again. `worker_allocator_environment` makes
workers keep it for 30 s instead (`MIMALLOC_PURGE_DELAY`). Measured over a 1,000,000-row
core ingest with two workers: their page faults 2.54 → 0.62 million and their system
time 5.9-6.3 → 1.8-2.2 s, in three interleaved pairs.

The chunk's bytes themselves (64 MiB, read into a Python `bytes`) come from the C
library's allocator, which serves any block over 32 MiB with a fresh `mmap` and unmaps it
when freed: 16,000 page faults a chunk, every chunk. Workers therefore also take large
blocks from the heap (`MALLOC_MMAP_MAX_=0`) and keep up to 1 GiB of freed heap
(`MALLOC_TRIM_THRESHOLD_`; without it the freed top of the heap goes back to the kernel
and the next chunk's columns fault it in again). Measured on six 64 MiB chunks in one
process: reading a chunk 0.84 → 0.24 µs a row (0.31 → 0 page faults a row), the other
phases unchanged; over a 1,000,000-row core ingest with two workers, all page faults
0.66-0.67 → 0.37-0.39 million in three pairs.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

TRANSPARENT_HUGEPAGES = "CATALOG_TRANSPARENT_HUGEPAGES"
_PR_SET_THP_DISABLE = 41


@functools.cache
def without_transparent_hugepages() -> bool:
    """Turn transparent huge pages off for this process and the processes it forks from
    now on (Linux `prctl(PR_SET_THP_DISABLE)`). True if they are off; a no-op elsewhere,
    or when the setting keeps them on."""
    if os.environ.get(TRANSPARENT_HUGEPAGES, "").strip().lower() in ("1", "on", "true", "yes"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0


PURGE_DELAY = "MIMALLOC_PURGE_DELAY"
WORKER_PURGE_DELAY_MS = "30000"
# What a worker process starts with (each name only when the environment has no value).
WORKER_ALLOCATOR_SETTINGS = {
    PURGE_DELAY: WORKER_PURGE_DELAY_MS,
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
}


@contextmanager
def worker_allocator_environment() -> Iterator[None]:
    """Processes started (spawned) inside this block keep the memory they free for the
    next chunk (`WORKER_ALLOCATOR_SETTINGS`): both allocators read their settings from the
    environment when they load, so these are set in this process's environment for the
    block and removed afterwards. A value already set is left alone."""
    added = {
        name: value for name, value in WORKER_ALLOCATOR_SETTINGS.items() if name not in os.environ
    }
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)
