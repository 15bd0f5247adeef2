"""Jobs, and the run config that picks an executor for a file of a given size."""

from __future__ import annotations

import os

import dagster as dg

from catalog_pipeline.assets.partitions import source_csvs

INGEST_JOB = "catalog_ingest_job"
# Files up to this many chunks run every step in one process: a process per chunk costs
# more (interpreter start, imports) than a few chunks take to ingest.
IN_PROCESS_MAX_CHUNKS = 3

catalog_ingest_job = dg.define_asset_job(
    INGEST_JOB,
    selection=dg.AssetSelection.assets("catalog_items", "invalid_item_logs"),
    partitions_def=source_csvs,
    description="Ingest one scraper CSV (a `source_csvs` partition) into the catalog.",
    executor_def=dg.multi_or_in_process_executor,
)


def executor_run_config(size: int, chunk_bytes: int, cores: int | None = None) -> dict:
    """In-process for small files; one process per core for large ones."""
    if size <= IN_PROCESS_MAX_CHUNKS * chunk_bytes:
        return {"execution": {"config": {"in_process": {}}}}
    workers = max(1, min(cores or os.cpu_count() or 1, -(-size // chunk_bytes)))
    return {"execution": {"config": {"multiprocess": {"max_concurrent": workers}}}}
