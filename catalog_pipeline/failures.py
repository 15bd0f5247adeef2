"""What happens when an ingest run ends without completing its file, free of Dagster: the
file is marked `failed` with the reason (once per run, never over a newer run's state),
and someone is told: the webhook alert and Sentry, once per run.

Called by the run-failure sensors (every launch path: UI, backfill, sensor, schedule)
and by `catalog-pipeline ingest` for its in-process runs; whichever comes second finds
the run recorded and does nothing.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine

from catalog_pipeline.core.alerts import RunFailureAlert, post_alert, webhook_url_from_environment
from catalog_pipeline.core.bucket import Bucket
from catalog_pipeline.core.errors import root_cause
from catalog_pipeline.core.naming import parse_object_key
from catalog_pipeline.core.retry import retrying
from catalog_pipeline.db import failures as db
from catalog_pipeline.observability import report_failure

log = logging.getLogger("catalog_pipeline.failures")


def handle_failed_ingest(
    engine: Engine,
    bucket: Bucket | None,
    *,
    run_id: str,
    run_family: list[str],
    object_key: str,
    partition_key: str,
    reason: str,
    job_name: str,
    etag: str | None = None,
    run_url: str | None = None,
) -> db.RecordedFailure:
    """Record the failure of run `run_id` on `object_key` and, the first time, alert."""
    unplanned = _unplanned(bucket, object_key, etag)
    recorded = retrying(
        lambda: db.record_run_failure(
            engine, run_id, run_family, object_key, reason, etag=etag, unplanned=unplanned
        ),
        f"{object_key}: recording the failure of run {run_id}",
    )
    if not recorded.new:
        return recorded
    log.error(
        "%s: run %s failed: %s",
        object_key,
        run_id,
        reason,
        extra={"run_id": run_id, "partition": partition_key},
    )
    alert = RunFailureAlert(
        object_key=object_key,
        partition_key=partition_key,
        reason=reason,
        run_id=run_id,
        run_url=run_url,
        job_name=job_name,
        failed_chunks=recorded.failed_chunks,
    )
    report_failure(alert)
    url = webhook_url_from_environment()
    if url:
        try:
            post_alert(url, alert)
        except Exception as error:  # the failure stays recorded; the alert is logged as lost
            log.error(
                "%s: the failure alert of run %s was not delivered: %s",
                object_key,
                run_id,
                root_cause(error),
            )
        else:
            retrying(lambda: db.mark_alerted(engine, run_id), f"run {run_id}: alert sent")
    return recorded


def _unplanned(bucket: Bucket | None, object_key: str, etag: str | None) -> db.UnplannedFile | None:
    """The object's current version, for a run that failed before recording its plan;
    None when the bucket cannot say (deleted, unreachable) or moved on to another ETag."""
    if bucket is None:
        return None
    try:
        info = bucket.head(object_key)
    except Exception as error:
        log.warning("%s: HEAD for the failure record failed: %s", object_key, root_cause(error))
        return None
    if etag is not None and info.etag != etag:
        return None
    name = parse_object_key(info.key, info.last_modified)
    return db.UnplannedFile(
        object_key=info.key,
        etag=info.etag,
        size=info.size,
        last_modified=info.last_modified,
        source=name.source,
        observed_at=name.observed_at,
    )
