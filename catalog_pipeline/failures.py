"""What happens when an ingest run ends without completing its file, free of Dagster: the
file is marked `failed` with the reason (once per run, never over a newer run's state),
and someone is told: the webhook alert and Sentry, once per run.

Called by the run-failure sensors (every launch path: UI, backfill, sensor, schedule)
and by `catalog-pipeline ingest` for its in-process runs; whichever comes second finds
the run recorded and does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import Engine

from catalog_pipeline.core.alerts import (
    ALERT_RETRY_POLICY,
    RunFailureAlert,
    post_alert,
    webhook_url_from_environment,
)
from catalog_pipeline.core.bucket import Bucket
from catalog_pipeline.core.errors import root_cause
from catalog_pipeline.core.naming import encode_partition_key
from catalog_pipeline.core.retry import RetryPolicy, retrying
from catalog_pipeline.db import failures as db
from catalog_pipeline.db.ingest import SourceObject
from catalog_pipeline.ingest import source_object
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
    planning_started: bool = True,
    policy: RetryPolicy | None = None,
) -> db.RecordedFailure:
    """Record the failure of run `run_id` on `object_key` and, the first time, alert.

    A run that failed before it stored a plan (`planning_started` but no file row) records
    the object's version as `failed`: its run's ETag tag, else the bucket's current one."""
    unplanned = _unplanned(bucket, object_key, etag) if planning_started else None
    recorded = retrying(
        lambda: db.record_run_failure(
            engine, run_id, run_family, object_key, reason, etag=etag, unplanned=unplanned
        ),
        f"{object_key}: recording the failure of run {run_id}",
        policy,
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
    deliver_alert(engine, alert, policy)
    return recorded


def deliver_alert(
    engine: Engine, alert: RunFailureAlert, policy: RetryPolicy | None = None
) -> bool:
    """POST the alert to the webhook, if one is configured, and note that it went out.
    A delivery that fails is logged; `resend_pending_alerts` tries it again later."""
    url = webhook_url_from_environment()
    if not url:
        return False
    # At most the alert's own budget (30 s): a webhook that is down must not hold a sensor.
    shorter = policy and policy.budget_seconds < ALERT_RETRY_POLICY.budget_seconds
    try:
        post_alert(url, alert, policy=policy if shorter else ALERT_RETRY_POLICY)
    except Exception as error:  # the failure stays recorded; the alert is retried later
        log.error(
            "%s: the failure alert of run %s was not delivered: %s",
            alert.object_key,
            alert.run_id,
            root_cause(error),
        )
        return False
    retrying(
        lambda: db.mark_alerted(engine, alert.run_id), f"run {alert.run_id}: alert sent", policy
    )
    return True


def resend_pending_alerts(
    engine: Engine,
    run_url: Callable[[str], str],
    within: timedelta = timedelta(days=1),
    limit: int = 20,
    policy: RetryPolicy | None = None,
) -> int:
    """Deliver the alerts of recorded failures that did not go out (webhook down, process
    killed between the record and the post), for failures of the last `within`."""
    if not webhook_url_from_environment():
        return 0
    sent = 0
    for failure in db.pending_alerts(engine, within, limit):
        alert = RunFailureAlert(
            object_key=failure.object_key,
            partition_key=encode_partition_key(failure.object_key),
            reason=failure.reason,
            run_id=failure.run_id,
            run_url=run_url(failure.run_id),
            job_name="catalog_ingest",
            failed_chunks=failure.failed_chunks,
        )
        sent += deliver_alert(engine, alert, policy)
    return sent


def _unplanned(bucket: Bucket | None, object_key: str, etag: str | None) -> SourceObject | None:
    """The object's version for a run that failed before recording its plan: the one its
    ETag tag names, else the current one; None when the bucket cannot say (deleted,
    unreachable) or the object moved on from the tagged version."""
    if bucket is None:
        return None
    try:
        info = bucket.head(object_key)
    except Exception as error:
        log.warning("%s: HEAD for the failure record failed: %s", object_key, root_cause(error))
        return None
    if etag is not None and info.etag != etag:
        return None
    return source_object(info)
