"""`new_csv_objects_sensor`: new objects and re-uploads in the bucket become partition runs."""

import os

import dagster as dg

from catalog_pipeline import discovery
from catalog_pipeline.assets.ingest import CATALOG_ITEMS, FILE_ACCEPTED
from catalog_pipeline.assets.partitions import partition_key_for, source_csvs
from catalog_pipeline.core.errors import RetriesExhaustedError, is_transient, root_cause
from catalog_pipeline.executor import OBJECT_SIZE_TAG
from catalog_pipeline.jobs import catalog_ingest_job
from catalog_pipeline.observability import logger_run_config
from catalog_pipeline.resources.catalog import BucketResource, CatalogDatabase

OBJECT_KEY_TAG = "catalog/object_key"
ETAG_TAG = "catalog/etag"
INTERVAL_SETTING = "CATALOG_SENSOR_INTERVAL_SECONDS"


def run_key(partition_key: str, etag: str) -> str:
    """One run per object version: the same key with a new ETag is a new run."""
    return f"{partition_key}@{etag}"


def build_new_csv_objects_sensor(
    name: str = "new_csv_objects_sensor",
    scan_limit: int = discovery.SCAN_LIMIT,
    request_limit: int = discovery.REQUEST_LIMIT,
    minimum_interval_seconds: int | None = None,
) -> dg.SensorDefinition:
    if minimum_interval_seconds is None:
        minimum_interval_seconds = int(os.environ.get(INTERVAL_SETTING) or 30)

    @dg.sensor(
        name=name,
        job=catalog_ingest_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Finds new CSV objects and re-uploads (new ETag) in the bucket, "
        f"{scan_limit} objects per tick, adds their `source_csvs` partitions and requests "
        "one ingest run per object version. Empty or unreadable files are recorded as "
        "rejected, with the reason, and not run.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        bucket: BucketResource,
        catalog_db: CatalogDatabase,
    ) -> dg.SensorResult:
        partitions = set(context.instance.get_dynamic_partitions(source_csvs.name))
        try:
            found = discovery.discover(
                bucket.open(),
                catalog_db.engine(),
                context.cursor or "",
                lambda info: partition_key_for(info.key) in partitions,
                scan_limit=scan_limit,
                request_limit=request_limit,
            )
        except Exception as error:
            if not (is_transient(error) or isinstance(error, RetriesExhaustedError)):
                raise
            # The bucket or the database is down or throttling: this tick is skipped, the
            # cursor stays, and the next tick resumes where this one started.
            return dg.SensorResult(skip_reason=f"skipped this tick: {root_cause(error)}")
        requests = []
        for info in found.new:
            key = partition_key_for(info.key)
            requests.append(
                dg.RunRequest(
                    run_key=run_key(key, info.etag),
                    partition_key=key,
                    # No executor config: `catalog_executor` decides from the size, as it
                    # does for a run launched from the UI.
                    run_config=logger_run_config(),
                    tags={
                        OBJECT_KEY_TAG: info.key,
                        ETAG_TAG: info.etag,
                        OBJECT_SIZE_TAG: str(info.size),
                    },
                )
            )
        rejections = []
        for rejection in found.rejected:
            context.log.warning(f"{rejection.info.key}: rejected: {rejection.reason}")
            rejections.extend(rejection_events(rejection))
        for key, error in found.skipped:
            context.log.warning(f"{key}: skipped this tick: {error}")
        new_partitions = sorted(
            {partition_key_for(i.key) for i in [*found.new, *(r.info for r in found.rejected)]}
            - partitions
        )
        context.log.info(
            f"scanned {found.scanned} objects after {context.cursor or '(start)'!r}: "
            f"{len(requests)} to ingest, {len(found.rejected)} rejected"
        )
        return dg.SensorResult(
            run_requests=requests,
            cursor=found.next_after,
            dynamic_partitions_requests=(
                [source_csvs.build_add_request(new_partitions)] if new_partitions else []
            ),
            asset_events=rejections,
        )

    return _sensor


def rejection_events(
    rejection: discovery.Rejection,
) -> tuple[dg.AssetMaterialization, dg.AssetCheckEvaluation]:
    """What a run of a rejected file would record, without the run: a materialization of
    its partition with 0 rows, `status: rejected` and the reason, and `file_accepted`
    failed as a warning. The partition then shows as materialized with the reason on its
    page, as a file rejected by a run does, instead of "Missing" for ever."""
    info, partition = rejection.info, partition_key_for(rejection.info.key)
    materialization = dg.AssetMaterialization(
        asset_key=CATALOG_ITEMS,
        partition=partition,
        description=f"rejected: {rejection.reason}",
        metadata={
            "dagster/row_count": dg.MetadataValue.int(0),
            "status": "rejected",
            "rejected_reason": rejection.reason,
            "object_key": info.key,
            "etag": info.etag,
            "bytes": info.size,
            "rows": 0,
            "valid": 0,
            "invalid": 0,
        },
    )
    check = dg.AssetCheckEvaluation(
        asset_key=CATALOG_ITEMS,
        check_name=FILE_ACCEPTED,
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"rejected_reason": rejection.reason, "object_key": info.key},
        partition=partition,
    )
    return materialization, check


new_csv_objects_sensor = build_new_csv_objects_sensor()
