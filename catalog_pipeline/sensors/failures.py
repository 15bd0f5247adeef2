"""Run-status sensors that turn an ingest run's end into the file's state: a run that
failed (any step's error, the retry budget spent, the object changed) or was cancelled,
or whose worker died (run monitoring fails it), leaves its file `failed` with the root
cause, and the alert goes out once. They see runs from every launch path: the UI's
Materialize and backfills (`__ASSET_JOB`), `catalog_ingest_job`, the sensor's runs."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta

import dagster as dg

from catalog_pipeline import failures
from catalog_pipeline.assets.ingest import CATALOG_ITEMS, run_family
from catalog_pipeline.assets.partitions import object_key_for, partition_key_for
from catalog_pipeline.core.retry import RetryPolicy, retrying
from catalog_pipeline.db import failures as db
from catalog_pipeline.db.failures import RecordedFailure
from catalog_pipeline.discovery import sensor_retry_policy
from catalog_pipeline.jobs import INGEST_JOB
from catalog_pipeline.resources.catalog import BucketResource, CatalogDatabase

ETAG_TAG = "catalog/etag"
PARTITION_TAG = "dagster/partition"
WEBSERVER_URL_SETTING = "CATALOG_DAGSTER_URL"
DEFAULT_WEBSERVER_URL = "http://127.0.0.1:3000"


def ingest_partition(run: dg.DagsterRun) -> str | None:
    """The `source_csvs` partition a run ingests, or None when it is not an ingest run."""
    partition = run.tags.get(PARTITION_TAG)
    if not partition:
        return None
    if run.job_name == INGEST_JOB or CATALOG_ITEMS in (run.asset_selection or set()):
        return partition
    return None


def run_failure_reason(instance: dg.DagsterInstance, run_id: str, fallback: str) -> str:
    """The root cause of a run's failure: the first failed step's own description (our
    steps raise `Failure` with it) or its innermost error, never Dagster's wrapper; for a
    step whose process died (SIGKILL, out of memory) the executor's explanation; the
    run-level message (cancelled, worker lost) when no step failed. A run that run
    monitoring stopped past its maximum runtime says so, whatever its interrupted steps
    reported."""
    if (timed_out := _max_runtime_reason(instance, run_id)) is not None:
        return timed_out
    failed_steps = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    reasons = [_step_reason(instance, run_id, entry) for entry in failed_steps]
    if not reasons:
        return _run_level_reason(instance, run_id) or fallback.strip() or "the run failed"
    more = len(reasons) - 1
    return reasons[0] + (f" (and {more} more failed step{'s' * (more > 1)})" if more else "")


def _step_reason(instance: dg.DagsterInstance, run_id: str, entry) -> str:
    data = entry.dagster_event.step_failure_data
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description
    error = data.error
    while error is not None and error.cause is not None:
        error = error.cause
    if error is not None and error.cls_name == "ChildProcessCrashException":
        return _crash_explanation(instance, run_id, entry.step_key)
    lines = (error.message if error else "").strip().splitlines()
    return lines[0] if lines else f"step {entry.step_key} failed"


# Engine events that say why a run ended without a step failing: the code server saw its
# run worker die, or run monitoring found it gone.
_WORKER_DEATH = ("terminated by signal", "exited with code", "Detected run worker status")


def _max_runtime_reason(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """Run monitoring cancels a run past its maximum runtime (`dagster/max_runtime`, else
    the instance's `run_monitoring.max_runtime_seconds`) with "Canceling due to exceeding
    maximum runtime of N seconds." first; then its steps fail as interrupted."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_CANCELING):
        found = re.search(r"maximum runtime of (\d+) seconds", entry.dagster_event.message or "")
        if found:
            return (
                f"the run exceeded its maximum runtime of {int(found.group(1)):,} s and run "
                "monitoring stopped it (a `dagster/max_runtime` tag on the run allows more)"
            )
    return None


def _run_level_reason(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """Why a run failed when no step did: the run failure's own error (innermost), else
    the engine event that reported its worker's death."""
    for entry in reversed(instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)):
        data = entry.dagster_event.event_specific_data
        error = getattr(data, "error", None)
        while error is not None and error.cause is not None:
            error = error.cause
        if error is not None and error.message.strip():
            lines = [line.strip() for line in error.message.strip().splitlines() if line.strip()]
            # dagster-celery's wrapper lists each failed step's own error after its line:
            # "During celery execution errors occurred in workers:" / "[step]: Error: …".
            if lines[0].endswith("errors occurred in workers:") and len(lines) > 1:
                return lines[1]
            return lines[0]
    for entry in reversed(instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)):
        message = (entry.dagster_event.message or "").strip()
        if any(marker in message for marker in _WORKER_DEATH):
            first = message.removeprefix("[DagsterApiServer] ").split(". ")[0].rstrip(".")
            return f"{first}; the run worker died (killed, or out of memory)"
    return None


def _crash_explanation(instance: dg.DagsterInstance, run_id: str, step_key: str | None) -> str:
    """The executor's engine event for a step process that died ("… was terminated by
    signal 9 (SIGKILL) …"), first sentence."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        message = entry.dagster_event.message or ""
        if entry.step_key == step_key and "child process for step" in message:
            return message.split(". ")[0].strip().rstrip(".") + "; the step's work was not saved"
    return f"the process of step {step_key} died without reporting an error"


def run_url(run_id: str) -> str:
    base = os.environ.get(WEBSERVER_URL_SETTING) or DEFAULT_WEBSERVER_URL
    return f"{base.rstrip('/')}/runs/{run_id}"


def record_failed_run(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    fallback_reason: str,
    catalog_db: CatalogDatabase,
    bucket: BucketResource,
    policy: RetryPolicy | None = None,
) -> RecordedFailure | None:
    """Mark the run's file `failed` and alert (once per run); None for other runs and for
    runs that never started a step (cancelled in the queue: they touched nothing)."""
    partition = ingest_partition(run)
    if partition is None:
        return None
    started = [
        entry.step_key or ""
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
    ]
    if not started:
        return None
    return failures.handle_failed_ingest(
        catalog_db.engine(),
        bucket.open(),
        run_id=run.run_id,
        run_family=run_family(run),
        object_key=object_key_for(partition),
        partition_key=partition,
        reason=run_failure_reason(instance, run.run_id, fallback_reason),
        job_name=run.job_name,
        etag=run.tags.get(ETAG_TAG),
        run_url=run_url(run.run_id),
        planning_started=any(key.endswith("plan_chunks") for key in started),
        policy=policy,
    )


def _record_from_sensor(
    context, reason: str, catalog_db: CatalogDatabase, bucket: BucketResource
) -> None:
    """A run-status sensor's work: record the run's failure within the sensor's budget."""
    run = context.dagster_run
    recorded = record_failed_run(
        context.instance, run, reason, catalog_db, bucket, sensor_retry_policy()
    )
    if recorded is None:
        return
    context.log.info(
        f"run {run.run_id}: file {'marked failed' if recorded.file_marked else 'unchanged'}"
        f"{'' if recorded.new else ' (recorded before)'}"
    )


@dg.run_failure_sensor(
    name="ingest_run_failure_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description="Marks the file of a failed ingest run `failed` with the root cause and "
    "the chunks that did not complete, and sends the alert (webhook, Sentry) once per run.",
)
def ingest_run_failure_sensor(
    context: dg.RunFailureSensorContext, catalog_db: CatalogDatabase, bucket: BucketResource
) -> None:
    _record_from_sensor(context, context.failure_event.message or "", catalog_db, bucket)


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED,
    name="ingest_run_canceled_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description="Marks the file of a cancelled ingest run `failed` (reason: cancelled), "
    "so that no file stays `ingesting` after its run has ended.",
)
def ingest_run_canceled_sensor(
    context: dg.RunStatusSensorContext, catalog_db: CatalogDatabase, bucket: BucketResource
) -> None:
    reason = f"run {context.dagster_run.run_id} was cancelled before the file was complete"
    _record_from_sensor(context, reason, catalog_db, bucket)


RECONCILE_AFTER = timedelta(minutes=2)
RECONCILE_BATCH = 50


@dg.sensor(
    name="ingest_reconcile_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="The backstop of the run-failure sensors: files left `planned`/`ingesting` "
    "by a run that has ended (a failure the sensors could not record, say while the "
    "database was down) or that nobody holds any more (an in-process run killed with its "
    "process) are marked `failed`; alerts that could not be delivered are sent again.",
)
def ingest_reconcile_sensor(
    context: dg.SensorEvaluationContext, catalog_db: CatalogDatabase, bucket: BucketResource
) -> dg.SkipReason:
    policy = sensor_retry_policy()
    engine = catalog_db.engine()
    now = datetime.now(UTC)
    marked = 0
    for file in retrying(
        lambda: db.open_files(engine, RECONCILE_AFTER, RECONCILE_BATCH), "open files", policy
    ):
        run = context.instance.get_run_by_id(file.run_id) if file.run_id else None
        if run is not None and run.is_finished and run.status != dg.DagsterRunStatus.SUCCESS:
            recorded = record_failed_run(context.instance, run, "", catalog_db, bucket, policy)
        elif (run is None or not run.is_finished) and file.lease_lost(now):
            recorded = failures.handle_failed_ingest(
                engine,
                None,
                run_id=file.run_id or f"unknown-{file.source_file_id}",
                run_family=[],
                object_key=file.object_key,
                partition_key=partition_key_for(file.object_key),
                reason=f"the run {file.run_id} that was ingesting this file ended without a "
                "record (its process was killed, or it lost the object's lease)",
                job_name=run.job_name if run else "catalog-pipeline",
                etag=file.etag,
                run_url=run_url(file.run_id) if run else None,
                planning_started=False,
                policy=policy,
            )
        else:
            continue
        marked += bool(recorded and recorded.file_marked)
    resent = failures.resend_pending_alerts(engine, run_url, policy=policy)
    return dg.SkipReason(f"{marked} file(s) marked failed, {resent} alert(s) sent again")
