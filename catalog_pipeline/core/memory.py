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
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

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
