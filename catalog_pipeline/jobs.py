"""Jobs, and the run config that picks an executor for a file of a given size."""

from __future__ import annotations

import os

import dagster as dg

from catalog_pipeline.assets.partitions import source_csvs
from catalog_pipeline.core.chunking import checked_chunk_bytes
from catalog_pipeline.observability import logger_run_config

INGEST_JOB = "catalog_ingest_job"
# Files up to this many chunks run every step in one process: a process per chunk costs
# more (interpreter start, imports) than a few chunks take to ingest.
IN_PROCESS_MAX_CHUNKS = 3
PRELOAD_MODULE = "catalog_pipeline.preload"

catalog_ingest_job = dg.define_asset_job(
    INGEST_JOB,
    selection=dg.AssetSelection.assets("catalog_items", "invalid_item_logs"),
    partitions_def=source_csvs,
    description="Ingest one scraper CSV (a `source_csvs` partition) into the catalog.",
    executor_def=dg.multi_or_in_process_executor,
)


def executor_run_config(
    size: int, chunk_bytes: int, cores: int | None = None, steps: int | None = None
) -> dict:
    """In-process for small files; for large ones, one concurrent chunk step per core plus
    one, capped by the chunk count (`steps` sets the number instead).

    The extra step fills the time a step spends starting (a fork, rebuilding its run
    context, connecting: about 0.3 s of each 2.5 s step at 64 MiB) and waiting on the
    database, which would leave a core idle with exactly one step per core. Measured on
    2 cores, the 1,000,000-row benchmark file in four interleaved pairs: 3 steps took
    29.3-35.3 s where 2 took 32.9-38.9 s. The core path without Dagster gains nothing
    from a third worker (its workers never restart), so this is Dagster's step start.
    """
    checked_chunk_bytes(chunk_bytes)  # a clear error, not a division by zero
    logs = logger_run_config()  # JSON run logs when CATALOG_LOG_FORMAT=json
    if size <= IN_PROCESS_MAX_CHUNKS * chunk_bytes:
        return {"execution": {"config": {"in_process": {}}}, **logs}
    if steps is None:
        steps = (cores or os.cpu_count() or 1) + 1
    workers = max(1, min(steps, -(-size // chunk_bytes)))
    return {"execution": {"config": {"multiprocess": multiprocess_config(workers)}}, **logs}


def multiprocess_config(workers: int) -> dict:
    """Chunk steps forked from a server that has already imported the code location.

    The default (spawn) starts a fresh interpreter per step, which then imports Dagster
    and our definitions again: about 3 s a step. Forking a warm server costs about 0.2 s.
    """
    return {
        "max_concurrent": workers,
        "start_method": {"forkserver": {"preload_modules": [PRELOAD_MODULE]}},
    }
