"""`catalog-pipeline status`: the state of the pipeline on one page, for a person at a
terminal or (with `--json`) for a monitoring check.

Files by status, the catalog and the invalid-row log, the newest ingest of the objects
touched last, the depth of every work queue (playcount backfill, classification,
embeddings) and the last tick of the bucket sensor. Runs and ticks come from the Dagster
instance of `DAGSTER_HOME` when there is one (what the UI shows); without one, the
database alone answers: every `source_files` row carries the run that wrote it. Every
part is a bounded read, so the command stays fast on a large catalog.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from catalog_pipeline.core.errors import root_cause
from catalog_pipeline.core.retry import retrying
from catalog_pipeline.db import status as db

if TYPE_CHECKING:
    import dagster as dg

SENSOR_NAME = "new_csv_objects_sensor"
PARTITIONS_SHOWN = 10
FAILED_SHOWN = 50
HOLDS_SHOWN = 10
RUNS_READ = 200  # newest ingest runs read to find the newest run of PARTITIONS_SHOWN keys


def repair_command(object_key: str) -> str:
    """The command that retries one failed file, quoted for a POSIX shell."""
    return f"catalog-pipeline repair {shlex.quote(object_key)}"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat(timespec="seconds")


def _age_seconds(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else round((now - moment).total_seconds(), 1)


def instance_from_environment() -> tuple[dg.DagsterInstance | None, str | None]:
    """The Dagster instance of `DAGSTER_HOME`, or None and why not. An instance that cannot
    be opened is no reason to fail a status: the database still answers."""
    if not os.environ.get("DAGSTER_HOME"):
        return None, "DAGSTER_HOME is not set: runs are read from the database"
    import dagster as dg

    try:
        return dg.DagsterInstance.get(), None
    except Exception as error:
        return None, f"the Dagster instance in $DAGSTER_HOME is not usable: {root_cause(error)}"


def collect_status(
    engine: Engine,
    instance: dg.DagsterInstance | None,
    instance_note: str | None = None,
    now: datetime | None = None,
) -> dict:
    """The whole status as plain JSON-ready values (what `status --json` prints)."""
    now = now or datetime.now(UTC)
    files = retrying(lambda: db.file_counts(engine), "status: counting files")
    status: dict = {
        "database": engine.url.render_as_string(hide_password=True),
        "files": {
            **files.by_status,
            "oldest_ingesting_since": _iso(files.oldest_open_since),
            "oldest_ingesting_age_seconds": _age_seconds(files.oldest_open_since, now),
        },
        "catalog_items": retrying(lambda: db.catalog_item_count(engine), "status: items"),
        "invalid_rows": retrying(lambda: db.invalid_row_count(engine), "status: invalid rows"),
        "delisting": _delisting(engine),
        "partitions": _partitions(engine, instance, instance_note),
        "queues": _queues(engine),
        "sensor": _sensor(instance),
    }
    return status


def _delisting(engine: Engine) -> dict:
    delisted, holds = retrying(lambda: db.delisting_state(engine, HOLDS_SHOWN), "status: delisting")
    return {
        "delisted_items": delisted,
        "holds": [
            {"object_key": h.object_key, "source": h.source, "reason": h.reason} for h in holds
        ],
    }


def _partitions(engine: Engine, instance: dg.DagsterInstance | None, note: str | None) -> dict:
    if instance is not None:
        try:
            return _partitions_from_instance(instance)
        except Exception as error:  # an instance that fails to answer: the database does
            note = f"the Dagster instance did not answer: {root_cause(error)}"
    count, latest = retrying(
        lambda: db.latest_ingests(engine, PARTITIONS_SHOWN), "status: latest ingests"
    )
    return {
        "source": "database",
        "note": note,
        "count": count,
        "latest": [
            {
                "object_key": entry.object_key,
                "outcome": entry.status,
                "run_id": entry.run_id,
                "at": _iso(entry.updated_at),
                "reason": entry.reason,
            }
            for entry in latest
        ],
    }


def _partitions_from_instance(instance: dg.DagsterInstance) -> dict:
    """The newest `catalog_ingest_job` run of the partitions run last, as the UI shows them."""
    import dagster as dg

    from catalog_pipeline.assets.partitions import object_key_for, source_csvs
    from catalog_pipeline.jobs import INGEST_JOB

    records = instance.get_run_records(dg.RunsFilter(job_name=INGEST_JOB), limit=RUNS_READ)
    latest: dict[str, dict] = {}
    for record in records:  # newest first
        run = record.dagster_run
        partition = run.tags.get("dagster/partition")
        if partition is None or partition in latest:
            continue
        ended = record.end_time or record.start_time
        at = datetime.fromtimestamp(ended, UTC) if ended else record.create_timestamp
        latest[partition] = {
            "object_key": object_key_for(partition),
            "partition": partition,
            "outcome": run.status.value.lower(),
            "run_id": run.run_id,
            "at": _iso(at),
        }
        if len(latest) == PARTITIONS_SHOWN:
            break
    return {
        "source": "dagster",
        "note": None,
        "count": len(instance.get_dynamic_partitions(source_csvs.name)),
        "latest": list(latest.values()),
    }


def _queues(engine: Engine) -> dict:
    from catalog_pipeline.db.playcount import queue_counts

    return {
        "playcount": retrying(lambda: queue_counts(engine), "status: playcount queue"),
        "classification": _derived_queue(engine, "classification"),
        "embeddings": _derived_queue(engine, "embeddings"),
    }


def _derived_queue(engine: Engine, kind: str) -> dict:
    """Items waiting for the active classifier or embedder, items with a failure on record,
    and those left out after repeated failures. A deriver that cannot be built from the
    environment (a bad setting) is reported, not raised: the rest of the status stands."""
    from catalog_pipeline.db.derivation_failures import failure_counts, max_failures_setting

    try:
        key = _deriver_key(kind)
        max_failures = max_failures_setting()
    except Exception as error:
        return {"deriver": None, "error": root_cause(error)}
    if kind == "classification":
        from catalog_pipeline.db.classifications import count_items

        counts = retrying(
            lambda: count_items(engine, key, None, False, max_failures), f"status: {key}"
        )
        pending = counts.pending
    else:
        from catalog_pipeline.db.embeddings import count_pending

        pending = retrying(lambda: count_pending(engine, key, False, max_failures), key)
    ledger = retrying(lambda: failure_counts(engine, key, max_failures), f"status: {key}")
    return {
        "deriver": key,
        "pending": pending,
        "failed": ledger.total,
        "blocked": ledger.blocked,
    }


def _deriver_key(kind: str) -> str:
    """The key (`name@version`) results are stored under by the configured deriver."""
    from catalog_pipeline.resources.catalog import default_embedder, default_resources

    if kind == "classification":
        from catalog_pipeline.core.classification import classifier_key

        resource = default_resources()["classifier"].process_config_and_initialize()
        return classifier_key(resource.build())
    return default_embedder().process_config_and_initialize().build().key


def _sensor(instance: dg.DagsterInstance | None) -> dict | None:
    """The newest tick of the bucket sensor that the instance recorded (None without one)."""
    if instance is None:
        return None
    # Not exported by `dagster`; the storage API of the sensor pages of the UI.
    from dagster._core.definitions.run_request import InstigatorType

    found: dict = {"name": SENSOR_NAME, "state": None, "last_tick": None}
    try:
        states = [
            state
            for state in instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
            if state.instigator_name == SENSOR_NAME
        ]
        if not states:
            return found
        state = states[0]
        found["state"] = state.status.value.lower()
        ticks = instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
    except Exception as error:
        return {**found, "error": root_cause(error)}
    if ticks:
        tick = ticks[0]
        found["last_tick"] = {
            "at": _iso(datetime.fromtimestamp(tick.timestamp, UTC)),
            "status": tick.status.value.lower(),
            "runs": len(tick.run_ids),
            "skip_reason": tick.skip_reason,
            "error": tick.error.message.strip() if tick.error else None,
        }
    return found


@dataclass(frozen=True, slots=True)
class FailedListing:
    count: int
    files: list[dict]


def collect_failed(engine: Engine) -> FailedListing:
    """The failed files, newest failure first, each with its reason and retry command."""
    count, files = retrying(lambda: db.failed_files(engine, FAILED_SHOWN), "status: failed")
    return FailedListing(
        count,
        [
            {
                "object_key": file.object_key,
                "etag": file.etag,
                "source_file_id": file.source_file_id,
                "reason": file.reason,
                "failed_chunks": list(file.failed_chunks),
                "run_id": file.run_id,
                "failed_at": _iso(file.failed_at),
                "retry": repair_command(file.object_key),
            }
            for file in files
        ],
    )


# Human output


def format_status(status: dict) -> str:
    files = status["files"]
    lines = [f"catalog database: {status['database']}", ""]
    open_files = files["ingesting"] + files["planned"]
    ingesting = f"{open_files:,} ingesting"
    if files["oldest_ingesting_age_seconds"] is not None:
        ingesting += f" (oldest since {files['oldest_ingesting_since']}, "
        ingesting += f"{_age(files['oldest_ingesting_age_seconds'])} ago)"
    lines.append(
        f"files:          {files['completed']:,} completed, {files['rejected']:,} rejected, "
        f"{files['failed']:,} failed, {ingesting}, {files['superseded']:,} superseded"
    )
    lines.append(f"catalog items:  {status['catalog_items']:,}")
    lines.append(f"invalid rows:   {status['invalid_rows']:,}")
    if files["failed"]:
        lines.append("                (`catalog-pipeline status --failed` lists the failed files)")
    delisting = status["delisting"]
    lines.append(f"delisted items: {delisting['delisted_items']:,}")
    for hold in delisting["holds"]:
        lines.append(f"  held by {hold['object_key']}: {hold['reason']}")
    partitions = status["partitions"]
    where = "Dagster instance" if partitions["source"] == "dagster" else "database"
    lines += ["", f"partitions:     {partitions['count']:,} (last runs, from the {where}):"]
    if partitions.get("note"):
        lines.append(f"  ({partitions['note']})")
    width = max((len(entry["object_key"]) for entry in partitions["latest"]), default=0)
    for entry in partitions["latest"]:
        run = (entry["run_id"] or "no run")[:8]
        line = f"  {entry['object_key']:<{width}}  {entry['outcome']:<10} {entry['at']}  run {run}"
        lines.append(line)
        if entry.get("reason") and entry["outcome"] in ("failed", "rejected"):
            lines.append(f"  {'':<{width}}  ↳ {entry['reason']}")
    if not partitions["latest"]:
        lines.append("  none yet (run `catalog-pipeline ingest`)")
    queues = status["queues"]
    playcount = queues["playcount"]
    lines += [
        "",
        "queues:",
        f"  playcount backfill: {playcount['pending']:,} pending, "
        f"{playcount['in_progress']:,} in progress, {playcount['done']:,} done, "
        f"{playcount['failed']:,} failed",
    ]
    for name in ("classification", "embeddings"):
        queue = queues[name]
        if queue.get("deriver") is None:
            lines.append(f"  {name}: unknown ({queue.get('error')})")
            continue
        lines.append(
            f"  {name} ({queue['deriver']}): {queue['pending']:,} pending, "
            f"{queue['failed']:,} with failures, {queue['blocked']:,} left out after "
            "repeated failures"
        )
    sensor = status["sensor"]
    lines.append("")
    if sensor is None:
        lines.append(f"sensor:         {SENSOR_NAME}: unknown (no Dagster instance: DAGSTER_HOME)")
    elif sensor.get("last_tick") is None:
        state = f" ({sensor['state']})" if sensor.get("state") else ""
        error = f": {sensor['error']}" if sensor.get("error") else ""
        lines.append(f"sensor:         {SENSOR_NAME}{state}: no tick recorded{error}")
    else:
        tick = sensor["last_tick"]
        detail = tick["skip_reason"] or tick["error"] or f"{tick['runs']} run(s) requested"
        lines.append(
            f"sensor:         {SENSOR_NAME} ({sensor['state']}): last tick {tick['at']}, "
            f"{tick['status']}: {detail}"
        )
    return "\n".join(lines)


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7_200:
        return f"{seconds // 60}m"
    if seconds < 172_800:
        return f"{seconds // 3_600}h{(seconds % 3_600) // 60:02d}m"
    return f"{seconds // 86_400}d{(seconds % 86_400) // 3_600:02d}h"


def format_failed(listing: FailedListing) -> str:
    if not listing.count:
        return "no failed files"
    lines = [f"{listing.count:,} failed file{'s' * (listing.count != 1)}:"]
    for file in listing.files:
        chunks = file["failed_chunks"]
        where = f", chunks {', '.join(map(str, chunks))}" if chunks else ""
        lines += [
            "",
            f"{file['object_key']}  (failed {file['failed_at']}, ETag {file['etag']}{where})",
            f"  reason: {file['reason']}",
            f"  retry:  {file['retry']}",
        ]
    if listing.count > len(listing.files):
        lines.append(f"\n… and {listing.count - len(listing.files):,} more (newest shown first)")
    return "\n".join(lines)


def run_status_command(engine: Engine, failed: bool, json_mode: bool) -> int:
    """`catalog-pipeline status`: exit 0 whatever the state (a monitoring check reads the
    counts); a status that cannot be read at all is the CLI's usage/configuration error."""
    if failed:
        listing = collect_failed(engine)
        if json_mode:
            print(json.dumps({"failed": listing.count, "files": listing.files}))
        else:
            print(format_failed(listing))
        return 0
    instance, note = instance_from_environment()
    status = collect_status(engine, instance, note)
    if json_mode:
        print(json.dumps(status))
    else:
        print(format_status(status))
    sys.stdout.flush()
    return 0
