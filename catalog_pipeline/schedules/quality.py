"""`catalog_quality_schedule`: the catalog audit every day, whether or not files arrived
(a source that stops delivering is exactly what the `stale` check must catch)."""

import dagster as dg

from catalog_pipeline.assets.quality import CATALOG_QUALITY
from catalog_pipeline.schedules import utc_schedule

catalog_quality_job = dg.define_asset_job(
    "catalog_quality_job",
    selection=[CATALOG_QUALITY],
    description="Audit the catalog per source (prices, nulls, weights, names, staleness).",
)

catalog_quality_schedule = utc_schedule(catalog_quality_job, "0 10 * * *")
