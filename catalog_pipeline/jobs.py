"""Jobs. Every job runs on `catalog_executor`, which decides per run how its steps
execute (see `catalog_pipeline.executor`)."""

from __future__ import annotations

import dagster as dg

from catalog_pipeline.assets.partitions import source_csvs
from catalog_pipeline.executor import catalog_executor

INGEST_JOB = "catalog_ingest_job"
catalog_ingest_job = dg.define_asset_job(
    INGEST_JOB,
    selection=dg.AssetSelection.assets("catalog_items", "invalid_item_logs"),
    partitions_def=source_csvs,
    description="Ingest one scraper CSV (a `source_csvs` partition) into the catalog.",
    executor_def=catalog_executor,
)
