"""`new_csv_objects_sensor`: new objects and re-uploads in the bucket become partition runs."""

import json
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg

from catalog_pipeline import discovery
from catalog_pipeline.assets.ingest import CATALOG_ITEMS, FILE_ACCEPTED
from catalog_pipeline.assets.partitions import partition_key_for, source_csvs
from catalog_pipeline.core.bucket import ObjectInfo
from catalog_pipeline.core.errors import RetriesExhaustedError, is_transient, root_cause
from catalog_pipeline.db.partitions import PartitionRetention, retention_days
from catalog_pipeline.executor import OBJECT_SIZE_TAG
from catalog_pipeline.jobs import catalog_ingest_job
from catalog_pipeline.observability import logger_run_config
from catalog_pipeline.resources.catalog import BucketResource, CatalogDatabase

OBJECT_KEY_TAG = "catalog/object_key"
ETAG_TAG = "catalog/etag"
INTERVAL_SETTING = "CATALOG_SENSOR_INTERVAL_SECONDS"
# The tags the sensor daemon puts on the runs it launches (dagster._core.storage.tags).
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
RUN_KEY_BATCH = 500


@dataclass(frozen=True, slots=True)
class SweepCursor:
    """The sensor's cursor, JSON: where the sweep resumes, and when the current sweep
    started and how many objects it handled so far.

    A sweep in one lane is the key to list after (`after`; `""` with no `lanes`: a new
    sweep starts); a sweep cut into lanes (an S3 bucket, `CATALOG_SENSOR_LIST_CONCURRENCY`)
    is its lanes still to go, each [after, until] (until null: to the end).

    Never the empty string: Dagster keeps the previous cursor when a sensor returns ""
    (it only stores a truthy one), so a sweep that ended would never start again from the
    beginning. A cursor written before this format (a plain key) reads as `after`."""

    after: str = ""
    started: float | None = None  # UNIX time of the sweep's first tick
    handled: int = 0
    lanes: tuple[discovery.Lane, ...] = ()

    @classmethod
    def parse(cls, cursor: str | None) -> "SweepCursor":
        if not cursor:
            return cls()
        try:
            value = json.loads(cursor)
        except ValueError:
            return cls(cursor)
        if not isinstance(value, dict):
            return cls(cursor)
        lanes = tuple((str(low), high) for low, high in value.get("lanes") or ())
        return cls(
            str(value.get("after") or ""), value.get("started"), value.get("handled", 0), lanes
        )

    @classmethod
    def resume(cls, found: discovery.Discovery, started: float, handled: int) -> "SweepCursor":
        """Where the next tick goes on after `found` (a new sweep once it is complete)."""
        if found.complete:
            return cls()
        if len(found.lanes) == 1 and found.lanes[0][1] is None:
            return cls(found.lanes[0][0], started, handled)
        return cls(found.next_after, started, handled, tuple(found.lanes))

    @property
    def new_sweep(self) -> bool:
        return not self.after and not self.lanes

    def dumps(self) -> str:
        value: dict = {"after": self.after, "started": self.started, "handled": self.handled}
        if self.lanes:
            value["lanes"] = [list(lane) for lane in self.lanes]
        return json.dumps(value)


def run_key(partition_key: str, etag: str) -> str:
    """One run per object version: the same key with a new ETag is a new run."""
    return f"{partition_key}@{etag}"


def build_new_csv_objects_sensor(
    name: str = "new_csv_objects_sensor",
    scan_limit: int | None = None,
    request_limit: int = discovery.REQUEST_LIMIT,
    minimum_interval_seconds: int | None = None,
    list_budget_seconds: float | None = None,
    page_size: int = discovery.PAGE_SIZE,
    prefetch: bool = True,
) -> dg.SensorDefinition:
    """The sensor. Each tick lists and compares for `list_budget_seconds`
    (`CATALOG_SENSOR_LIST_BUDGET_SECONDS`, 20 s) and requests at most `request_limit` runs;
    `scan_limit` (None: the budget decides) caps the objects a tick lists; without one the
    next page is listed while a page is compared (`prefetch`)."""
    if minimum_interval_seconds is None:
        minimum_interval_seconds = int(os.environ.get(INTERVAL_SETTING) or 30)
    if list_budget_seconds is None:
        list_budget_seconds = discovery.list_budget_seconds()
    discovery.configured_list_concurrency()  # a bad value fails the code location's load
    budget = list_budget_seconds

    @dg.sensor(
        name=name,
        job=catalog_ingest_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Finds new CSV objects and re-uploads (new ETag) in the bucket, listing "
        f"from where the last tick stopped for up to {budget:g} s a tick and comparing each "
        "page with the catalog database, adds their `source_csvs` partitions and requests "
        f"one ingest run per object version (at most {request_limit} a tick). Empty or "
        "unreadable files are recorded as rejected, with the reason, and not run.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext,
        bucket: BucketResource,
        catalog_db: CatalogDatabase,
    ) -> dg.SensorResult:
        instance = context.instance
        cursor = SweepCursor.parse(context.cursor)
        tick_started = time.time()
        try:
            found = discovery.discover(
                bucket.open(),
                catalog_db.engine(),
                cursor.after,
                lambda infos: objects_with_partitions(instance, [i.key for i in infos]),
                lanes=cursor.lanes or None,
                run_requested=lambda infos: requested_versions(instance, name, infos),
                retention=PartitionRetention.from_days(retention_days(), datetime.now(UTC)),
                budget_seconds=budget,
                scan_limit=scan_limit,
                request_limit=request_limit,
                page_size=page_size,
                prefetch=prefetch,
            )
        except Exception as error:
            if not (is_transient(error) or isinstance(error, RetriesExhaustedError)):
                raise
            # The bucket or the database is down or throttling: this tick is skipped, the
            # cursor stays, and the next tick resumes where this one started.
            return dg.SensorResult(skip_reason=f"skipped this tick: {root_cause(error)}")
        requests = [_run_request(info) for info in found.new]
        rejections = []
        for rejection in found.rejected:
            context.log.warning(f"{rejection.info.key}: rejected: {rejection.reason}")
            rejections.extend(rejection_events(rejection))
        for key, error in found.skipped:
            context.log.warning(f"{key}: skipped this tick: {error}")
        # Only the partitions this tick needs, checked against the instance in one query:
        # a new object's, a re-upload's whose partition was retired, a rejected file's.
        wanted = {i.key for i in [*found.new, *(r.info for r in found.rejected)]}
        new_partitions = sorted(
            partition_key_for(key) for key in wanted - objects_with_partitions(instance, wanted)
        )
        context.log.info(_summary(found, cursor, len(requests)))
        if found.error:
            context.log.warning(f"stopped early, after {found.next_after!r}: {found.error}")
        started = cursor.started if cursor.started is not None else tick_started
        handled = cursor.handled + found.handled
        after = SweepCursor.resume(found, started, handled)
        if found.complete:
            context.log.info(
                f"sweep complete: {handled:,} objects in {time.time() - started:,.1f} s"
            )
        return dg.SensorResult(
            run_requests=requests,
            cursor=after.dumps(),
            dynamic_partitions_requests=(
                [source_csvs.build_add_request(new_partitions)] if new_partitions else []
            ),
            asset_events=rejections,
            skip_reason=(
                f"stopped early this tick: {found.error}" if found.error and not requests else None
            ),
        )

    return _sensor


def _run_request(info: ObjectInfo) -> dg.RunRequest:
    key = partition_key_for(info.key)
    return dg.RunRequest(
        run_key=run_key(key, info.etag),
        partition_key=key,
        # No executor config: `catalog_executor` decides from the size, as it does for a
        # run launched from the UI.
        run_config=logger_run_config(),
        tags={OBJECT_KEY_TAG: info.key, ETAG_TAG: info.etag, OBJECT_SIZE_TAG: str(info.size)},
    )


def _position(after: str, lanes: Sequence[discovery.Lane]) -> str:
    """Where a sweep stands: the key its first lane goes on after, and how many more."""
    first = repr(after or "(start)")
    return first if len(lanes) <= 1 else f"{first} and {len(lanes) - 1} more lanes"


def _summary(found: discovery.Discovery, cursor: SweepCursor, requested: int) -> str:
    if found.complete:
        where = "the end: the next tick starts a new sweep"
    else:
        where = _position(found.next_after, found.lanes)
    return (
        f"listed {found.scanned:,} objects after {_position(cursor.after, cursor.lanes)} "
        f"in {found.pages} pages, {found.seconds:.1f} s: {requested} to ingest, "
        f"{len(found.rejected)} rejected, "
        f"{found.seen + found.retired:,} already in the catalog ({found.retired:,} with retired "
        f"partitions), {found.pending} with a run already requested; stopped by "
        f"{found.stopped_by} at {where}"
    )


def objects_with_partitions(instance: dg.DagsterInstance, object_keys: Iterable[str]) -> set[str]:
    """Which of `object_keys` have a `source_csvs` partition: one query bounded by the keys
    asked about (never the whole partition set) on SQL instance storage."""
    by_partition = {partition_key_for(key): key for key in object_keys}
    if not by_partition:
        return set()
    storage = instance.event_log_storage
    if getattr(storage, "has_bounded_dynamic_partition_membership_query", False):
        found = instance.get_existing_dynamic_partitions(source_csvs.name, list(by_partition))
    else:  # a storage without the bounded query would load every key: ask one by one
        found = [p for p in by_partition if instance.has_dynamic_partition(source_csvs.name, p)]
    return {by_partition[partition] for partition in found}


def requested_versions(
    instance: dg.DagsterInstance, sensor_name: str, infos: Sequence[ObjectInfo]
) -> set[tuple[str, str]]:
    """The versions among `infos` this sensor already launched a run for (its run key is
    taken): the daemon would skip them anyway; the sensor need not probe them again."""
    by_run_key = {run_key(partition_key_for(i.key), i.etag): (i.key, i.etag) for i in infos}
    keys = list(by_run_key)
    found: set[tuple[str, str]] = set()
    for start in range(0, len(keys), RUN_KEY_BATCH):
        runs = instance.get_runs(
            dg.RunsFilter(
                tags={
                    RUN_KEY_TAG: keys[start : start + RUN_KEY_BATCH],
                    SENSOR_NAME_TAG: sensor_name,
                }
            )
        )
        found.update(
            by_run_key[run.tags[RUN_KEY_TAG]]
            for run in runs
            if run.tags.get(RUN_KEY_TAG) in by_run_key
        )
    return found


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
