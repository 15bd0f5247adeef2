"""`catalog-pipeline repair KEY`: re-ingest one object key's current version through the
same `catalog_ingest_job` run as `catalog-pipeline ingest`.

A repair re-ingests what was ingested before. When the object changed since its last
ingest (another ETag in the bucket than on the newest completed, failed or rejected
`source_files` row), a repair would ingest a version nobody has looked at, so it is
refused unless forced; with `--force` the current version is ingested and the old one
superseded, as the sensor would. Every attempt, refused ones too, is a `repair_history`
row saying who asked, what was found and what came of it. On an unchanged, completed
file a repair changes nothing but that bookkeeping: the ingest is idempotent. A compressed
object (`.csv.gz`, `.csv.zst`) is repaired like a plain one: its run plans it again, which
stages a fresh decompressed copy (the one a failed ingest kept is replaced).
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Engine

# `ingest_one` and the exit statuses are the CLI's, so that `ingest` and `repair` run and
# report an object alike. The CLI passes its session in: set up in the CLI's own module,
# its configuration errors are the CLI's `UsageError` also under `python -m`.
from catalog_pipeline.cli import EXIT_FILE_FAILED, EXIT_OK, EXIT_UNUSABLE, ingest_one
from catalog_pipeline.core.bucket import BucketError, ObjectMissingError
from catalog_pipeline.core.errors import root_cause
from catalog_pipeline.core.naming import hidden_file_reason, is_csv_key, is_hidden_key
from catalog_pipeline.core.retry import retrying
from catalog_pipeline.db.repair import (
    IngestedVersion,
    RepairRecord,
    last_ingested_version,
    record_repair,
)

if TYPE_CHECKING:
    from catalog_pipeline.cli import IngestSession

REQUESTED_BY = "CATALOG_REQUESTED_BY"
UNKNOWN_REQUESTER = "unknown"


@dataclass(frozen=True, slots=True)
class RepairResult:
    """What a repair did, as `--json` prints it. `status` is the file's (completed,
    rejected, failed) or `refused` when nothing was ingested."""

    object_key: str
    status: str
    rows_total: int
    rows_valid: int
    rows_invalid: int
    rejected_reason: str | None
    forced: bool
    ingested_etag: str | None
    current_etag: str | None
    run_id: str | None


class RepairRefused(Exception):
    """The repair did not run (the object changed since it was ingested, is missing, or is
    not a CSV); the message is the sentence for the user, `result` what was found."""

    def __init__(self, message: str, result: RepairResult) -> None:
        super().__init__(message)
        self.result = result


def requested_by() -> str:
    """Who asked: `CATALOG_REQUESTED_BY` (a scheduler or a wrapper names the person), else
    the login name, else "unknown"."""
    named = os.environ.get(REQUESTED_BY, "").strip()
    if named:
        return named
    try:
        return getpass.getuser() or UNKNOWN_REQUESTER
    except Exception:  # no USER/LOGNAME and no passwd entry (a bare container)
        return UNKNOWN_REQUESTER


def repair(session: IngestSession, object_key: str, force: bool = False) -> RepairResult:
    """Re-ingest `object_key`'s current version in `session` and record the attempt.

    Raises `RepairRefused` (after recording it) when the key is not a CSV or not in the
    bucket, or when the object changed since it was ingested and `force` is not set.
    """
    engine = session.engine
    attempt = _Attempt(engine, object_key, force, requested_by())
    attempt.ingested = retrying(
        lambda: last_ingested_version(engine, object_key), f"{object_key}: last ingest"
    )
    if not is_csv_key(object_key):
        raise attempt.refuse(
            f"{object_key} is not a CSV object (the ingest reads only keys ending .csv, "
            ".csv.gz or .csv.zst)",
            f"cannot repair {object_key}: it is not a CSV object, and the ingest reads only "
            "keys ending .csv, .csv.gz or .csv.zst",
        )
    if is_hidden_key(object_key):  # e.g. a compressed object's staged copy
        reason = hidden_file_reason(object_key)
        raise attempt.refuse(
            f"{object_key} is not ingested: {reason}",
            f"cannot repair {object_key}: it is not ingested ({reason}); repair the object "
            "it belongs to",
        )
    try:
        info = retrying(lambda: session.bucket.head(object_key), f"{object_key}: HEAD")
    except ObjectMissingError:
        where = f"no such object in {session.bucket.url}"
        raise attempt.refuse(
            where,
            f"cannot repair {object_key}: there is {where} (deleted, or a misspelt key?)",
        ) from None
    except BucketError as error:  # a key that escapes the bucket
        raise attempt.refuse(str(error), f"cannot repair {object_key}: {error}") from None
    except Exception as error:  # the bucket did not answer within the retry budget
        attempt.record_quietly(f"failed: {root_cause(error)}")
        raise
    attempt.current_etag = info.etag
    ingested = attempt.ingested
    if ingested is not None and ingested.etag != info.etag and not force:
        raise attempt.refuse(
            f"the object changed since it was ingested (ETag {ingested.etag}, now {info.etag})",
            f"{object_key} changed since it was ingested: its last ingest ({ingested.status}, "
            f"source file {ingested.source_file_id}) read ETag {ingested.etag}, the bucket "
            f"now holds ETag {info.etag}, so a repair would ingest a version nobody has "
            "ingested; run it again with --force to ingest the current version (the old "
            "one is then superseded)",
        )
    session.add_partitions([info])
    ingested_now = ingest_one(session, info)
    file = ingested_now.result
    outcome = f"failed: {file.rejected_reason}" if file.status == "failed" else file.status
    attempt.record_quietly(outcome, ingested_now.source_file_id, ingested_now.run_id)
    return RepairResult(
        object_key=object_key,
        status=file.status,
        rows_total=file.rows_total,
        rows_valid=file.rows_valid,
        rows_invalid=file.rows_invalid,
        rejected_reason=file.rejected_reason,
        forced=force,
        ingested_etag=attempt.ingested_etag,
        current_etag=info.etag,
        run_id=ingested_now.run_id,
    )


@dataclass(slots=True)
class _Attempt:
    """One repair attempt as it unfolds, and its `repair_history` row."""

    engine: Engine
    object_key: str
    forced: bool
    requested_by: str
    ingested: IngestedVersion | None = None
    current_etag: str | None = None

    @property
    def ingested_etag(self) -> str | None:
        return self.ingested.etag if self.ingested else None

    def record(
        self, outcome: str, source_file_id: int | None = None, run_id: str | None = None
    ) -> None:
        """Append the attempt to `repair_history`; a refused or failed attempt names the
        file row it was about (the last ingested one)."""
        if source_file_id is None and self.ingested is not None:
            source_file_id = self.ingested.source_file_id
        record = RepairRecord(
            object_key=self.object_key,
            source_file_id=source_file_id,
            ingested_etag=self.ingested_etag,
            current_etag=self.current_etag,
            forced=self.forced,
            requested_by=self.requested_by,
            outcome=outcome,
            run_id=run_id,
        )
        retrying(lambda: record_repair(self.engine, record), f"{self.object_key}: repair history")

    def record_quietly(self, outcome: str, *args) -> None:
        """`record`, when the attempt's own outcome matters more than its history row: a
        history that cannot be written is said on stderr, never hides what happened."""
        try:
            self.record(outcome, *args)
        except Exception as error:
            print(
                f"{self.object_key}: could not record the repair in repair_history: "
                f"{root_cause(error)}",
                file=sys.stderr,
            )

    def refuse(self, reason: str, sentence: str) -> RepairRefused:
        self.record(f"refused: {reason}")
        return RepairRefused(
            sentence,
            RepairResult(
                object_key=self.object_key,
                status="refused",
                rows_total=0,
                rows_valid=0,
                rows_invalid=0,
                rejected_reason=reason,
                forced=self.forced,
                ingested_etag=self.ingested_etag,
                current_etag=self.current_etag,
                run_id=None,
            ),
        )


def format_repair(result: RepairResult) -> str:
    """The human summary of a repair: the file's status and counts, then the versions."""
    lines = [
        f"repair {result.object_key}: {result.status}, {result.rows_total:,} rows, "
        f"{result.rows_valid:,} valid, {result.rows_invalid:,} invalid"
    ]
    if result.rejected_reason and result.status != "refused":
        lines.append(f"  ↳ {result.rejected_reason}")
    if result.ingested_etag is None:
        versions = f"ETag {result.current_etag} (never ingested before)"
    elif result.ingested_etag == result.current_etag:
        versions = f"ETag {result.current_etag} (unchanged since its last ingest)"
    else:
        versions = (
            f"ETag {result.current_etag} ingested in place of {result.ingested_etag}"
            f"{' (--force)' if result.forced else ''}"
        )
    lines.append(f"  {versions}; run {result.run_id}")
    return "\n".join(lines)


def run_repair_command(
    session: IngestSession, object_key: str, force: bool, json_mode: bool
) -> int:
    """`catalog-pipeline repair`: exit 0 when the file completed or was rejected as
    invalid input, 1 when it failed, 2 when the repair was refused (the sentence says why)."""
    try:
        result = repair(session, object_key, force)
    except RepairRefused as refused:
        if json_mode:
            print(json.dumps({"error": str(refused), "repair": asdict(refused.result)}))
        print(f"catalog-pipeline: {refused}", file=sys.stderr)
        return EXIT_UNUSABLE
    if json_mode:
        print(json.dumps({"repair": asdict(result)}))
    else:
        print(format_repair(result))
    if result.status == "failed":
        print(
            f"catalog-pipeline: the repair of {object_key} failed: {result.rejected_reason}. "
            "The reason is also in source_files.error and repair_history; fix the cause and "
            "run the repair again.",
            file=sys.stderr,
        )
        return EXIT_FILE_FAILED
    return EXIT_OK
