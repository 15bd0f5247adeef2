"""The one `Definitions` object of the code location; it only assembles."""

from __future__ import annotations

import dagster as dg

from catalog_pipeline.assets.classifications import item_classifications, reclassify_catalog_job
from catalog_pipeline.assets.embeddings import embedding_coverage, item_embeddings
from catalog_pipeline.assets.ingest import catalog_ingest
from catalog_pipeline.assets.playcount import playcount_history
from catalog_pipeline.assets.quality import catalog_quality
from catalog_pipeline.executor import catalog_executor
from catalog_pipeline.jobs import INGEST_JOB, catalog_ingest_job
from catalog_pipeline.observability import loggers_from_environment
from catalog_pipeline.resources.catalog import default_resources
from catalog_pipeline.resources.provider import default_stats_provider
from catalog_pipeline.resources.step_outputs import CatalogIOManager
from catalog_pipeline.schedules.partitions import (
    partition_retention_job,
    partition_retention_schedule,
)
from catalog_pipeline.schedules.playcount import (
    backfill_reclaim_job,
    backfill_reclaim_schedule,
    playcount_maintenance_job,
    playcount_maintenance_schedule,
)
from catalog_pipeline.schedules.quality import catalog_quality_job, catalog_quality_schedule
from catalog_pipeline.schedules.retention import (
    invalid_log_retention_job,
    invalid_log_retention_schedule,
)
from catalog_pipeline.sensors.automation import catalog_automation_sensor
from catalog_pipeline.sensors.failures import (
    ingest_reconcile_sensor,
    ingest_run_canceled_sensor,
    ingest_run_failure_sensor,
)
from catalog_pipeline.sensors.objects import new_csv_objects_sensor
from catalog_pipeline.sensors.pools import pool_limits_sensor
from catalog_pipeline.workers import executor_choice


def build_definitions(resources: dict | None = None) -> dg.Definitions:
    """Everything in the code location; `resources` replace the environment's defaults."""
    return dg.Definitions(
        assets=[
            catalog_ingest,
            catalog_quality,
            item_classifications,
            item_embeddings,
            playcount_history,
        ],
        asset_checks=[embedding_coverage],
        jobs=[
            catalog_ingest_job,
            invalid_log_retention_job,
            partition_retention_job,
            catalog_quality_job,
            reclassify_catalog_job,
            backfill_reclaim_job,
            playcount_maintenance_job,
        ],
        schedules=[
            invalid_log_retention_schedule,
            partition_retention_schedule,
            catalog_quality_schedule,
            backfill_reclaim_schedule,
            playcount_maintenance_schedule,
        ],
        sensors=[
            new_csv_objects_sensor,
            catalog_automation_sensor,
            pool_limits_sensor,
            ingest_run_failure_sensor,
            ingest_run_canceled_sensor,
            ingest_reconcile_sensor,
        ],
        resources=with_io_manager(
            {
                **default_resources(),
                "stats_provider": default_stats_provider(),
                **(resources or {}),
            }
        ),
        executor=catalog_executor,
        loggers=loggers_from_environment(),
    )


def with_io_manager(resources: dict) -> dict:
    """With `CATALOG_EXECUTOR=celery`, step outputs go to the catalog database, which every
    worker machine reaches (`CatalogIOManager`); else Dagster's default, files under
    `$DAGSTER_HOME/storage` on the one machine that runs the steps."""
    if "io_manager" in resources or executor_choice() != "celery":
        return resources
    return {**resources, "io_manager": CatalogIOManager(catalog_db=resources["catalog_db"])}


defs = build_definitions()


def ingest_job() -> dg.JobDefinition:
    """`catalog_ingest_job` on the environment's resources, importable by name: the CLI's
    runs are reconstructed from it, so that their chunk steps can run in processes."""
    return build_definitions().resolve_job_def(INGEST_JOB)
