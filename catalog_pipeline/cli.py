"""`catalog-pipeline`: headless ingest through the Dagster definitions, a demo, the state of
the pipeline, the work of its assets and schedules on demand, and migrations."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from typing import TYPE_CHECKING

from catalog_pipeline import settings
from catalog_pipeline.core.chunking import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES
from catalog_pipeline.progress import Progress, progress_wanted, shorten
from catalog_pipeline.workers import QUEUES, executor_choice

if TYPE_CHECKING:
    import dagster as dg
    from sqlalchemy import Engine

    from catalog_pipeline.core.bucket import Bucket, ObjectInfo
    from catalog_pipeline.resources.catalog import BucketResource, CatalogDatabase

DEMO_HINT = """
Open the Dagster UI on this catalog:

    dg dev                 # from the repository root (or `dagster dev`), then open http://127.0.0.1:3000

The `new_csv_objects_sensor` is on by default: it finds the files above and runs one
ingest per file; `catalog_items` partitions appear under Assets > catalog_items.
The catalog database is {database}.
"""


@dataclass(frozen=True, slots=True)
class FileResult:
    object_key: str
    status: str  # completed | rejected | failed
    rows_total: int
    rows_valid: int
    rows_invalid: int
    verified_row_count: int | None
    rejected_reason: str | None
    # A full-snapshot source's file: items it delisted, or why delisting was held.
    delisted_items: int | None = None
    delisting_held: str | None = None


@dataclass(frozen=True, slots=True)
class SkippedObject:
    """An object in the bucket that is not ingested, and why (hidden, not a CSV)."""

    key: str
    reason: str


# Exit statuses: every file completed or was rejected as invalid input; a file failed;
# the command could not run at all (usage, configuration, unreachable bucket or database).
EXIT_OK, EXIT_FILE_FAILED, EXIT_UNUSABLE = 0, 1, 2
# A chunk is one step's work, its byte range read into the step's memory whole: 2 GiB
# (32 times the default) is the most one step is asked to hold. Sizes down to 1 KiB stay
# allowed: tests use them to put many chunk boundaries in small files.
CHUNK_BYTES_RANGE = "from 1KiB (1,024 bytes) to 2GiB (2,147,483,648 bytes)"
_SIZE = re.compile(r"([0-9]+)\s*(B|KiB|MiB|GiB)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}


class UsageError(Exception):
    """The command line or the configuration is wrong: exit 2 with this sentence."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    arguments = parser.parse_args(argv)
    json_mode = bool(getattr(arguments, "json", False))
    try:
        _apply_overrides(arguments)
        return _run(arguments)
    except KeyboardInterrupt:
        print("catalog-pipeline: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message, hint = _explain(error)
        if json_mode:
            payload: dict = {"error": message}
            if arguments.command in ("ingest", "demo"):
                payload["files"] = []
            print(json.dumps(payload))
        print(f"catalog-pipeline: {message}\n{hint}", file=sys.stderr)
        return EXIT_UNUSABLE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catalog-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser(
        "ingest", help="ingest every CSV in the bucket through the Dagster job, from this process"
    )
    _add_target_options(ingest)
    ingest.add_argument(
        "--json",
        action="store_true",
        help='print a JSON summary only: {"files": [...], "skipped": [{"key", "reason"}]}',
    )

    demo = commands.add_parser("demo", help="write sample scrapes to the bucket and ingest them")
    _add_target_options(demo)
    demo.add_argument("--rows", type=int, default=40_000, help="rows of the large sample file")
    demo.add_argument("--json", action="store_true", help="print a JSON summary only")

    repair = commands.add_parser(
        "repair",
        help="re-ingest one object's current version through the Dagster job, from this process",
        description="Re-ingest one object key's current version through the same job as "
        "`ingest`, and record the attempt in repair_history. Refused when the object "
        "changed since its last ingest (the repair would ingest a version nobody has "
        "looked at), unless --force is given.",
    )
    repair.add_argument("key", metavar="KEY", help="the object key, as in source_files")
    repair.add_argument(
        "--force",
        action="store_true",
        help="ingest the current version even if the object changed since it was ingested",
    )
    _add_target_options(repair)
    repair.add_argument("--json", action="store_true", help="print a JSON summary only")

    embed = commands.add_parser(
        "embed",
        help="embed new and changed catalog items (the item_embeddings asset's code)",
        description="Embed every catalog item whose embedding input changed since its last "
        "embedding, with the embedder of $CATALOG_EMBEDDER (default: hashing, offline and "
        "lexical). Items that fail alone are counted and retried on the next run.",
    )
    _add_derivation_options(embed, "embed", "embedded")

    search = commands.add_parser(
        "search", help="the catalog items nearest to a text (run `embed` first)"
    )
    search.add_argument("text", metavar="TEXT")
    search.add_argument("--limit", type=int, default=10, help="results (default 10)")
    search.add_argument("--source", help="only items of this source")
    search.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL} or SQLite")
    search.add_argument(
        "--json",
        action="store_true",
        help='print {"results": [{"sku", "name", "source", "score"}]} only',
    )

    similar = commands.add_parser(
        "similar",
        help="the items of other sources nearest to one item: likely the same product",
    )
    similar.add_argument("sku", metavar="SKU")
    similar.add_argument("--limit", type=int, default=10, help="results (default 10)")
    similar.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL} or SQLite")
    similar.add_argument(
        "--json",
        action="store_true",
        help='print {"results": [{"sku", "name", "source", "score"}]} only',
    )

    status = commands.add_parser(
        "status",
        help="files by status, catalog counts, last runs, queue depths, the sensor's last tick",
        description="The state of the pipeline: files (object versions) by status, with the "
        "age of the oldest one still ingesting; catalog items and invalid rows; the newest "
        "ingest of the objects run last, with its outcome (from the Dagster instance of "
        "$DAGSTER_HOME when set, else from the database); the playcount, classification and "
        "embedding queues; the last tick of new_csv_objects_sensor (needs the instance). "
        "--failed lists the failed files instead, each with its reason and the command that "
        "retries it.",
    )
    status.add_argument(
        "--failed",
        action="store_true",
        help="list the failed files, their reasons and `catalog-pipeline repair KEY` for each",
    )
    status.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL} or SQLite")
    status.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object only: {"files", "catalog_items", "invalid_rows", '
        '"partitions", "queues", "sensor", ...}; with --failed {"failed": N, "files": [...]}',
    )

    classify = commands.add_parser(
        "classify",
        help="classify new and changed catalog items (the item_classifications asset's code)",
        description="Classify every catalog item not yet classified by the active classifier "
        "($CLASSIFIER: keyword, offline, by default; or openai) or changed since, with the "
        "code of the item_classifications asset and reclassify_catalog_job. Items the "
        "classifier fails on alone are counted and retried on the next run.",
    )
    _add_derivation_options(classify, "classify", "classified")

    playcounts = commands.add_parser("playcounts", help="the playcount backfill")
    playcount_commands = playcounts.add_subparsers(dest="playcounts_command", required=True)
    backfill = playcount_commands.add_parser(
        "backfill",
        help="a playcount maintenance pass: reclaim, enqueue, call the provider within quota",
        description="One pass of the playcount_history asset's maintenance: failed and "
        "expired rows back to pending, items with an external_id and no provider history "
        "queued, then the provider called for the best-ranked rows within the daily quota "
        "($PLAYCOUNT_DAILY_QUOTA). First it prints what the pass would cost: items to "
        "query, provider calls, quota left today. --source and --since narrow the items "
        "queued and called (the reclaim is queue-wide, as the hourly schedule's).",
    )
    backfill.add_argument("--source", metavar="S", help="only items of this source")
    backfill.add_argument(
        "--since",
        metavar="DATE",
        help="only items first seen or updated since this ISO date (UTC) or timestamp",
    )
    backfill.add_argument(
        "--dry-run", action="store_true", help="print the cost preview only; change nothing"
    )
    backfill.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL} or SQLite")
    backfill.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object only: {"dry_run", "preview": {...}, "result": {...}}',
    )

    retention = commands.add_parser(
        "retention",
        help="delete expired invalid-row logs and provider calls (invalid_log_retention_job)",
        description="Delete invalid-row logs and stats-provider calls older than their "
        "retention windows in bounded batches, with the defaults of invalid_log_retention_job "
        "(90 and 400 days, 10,000 rows a batch, 100 batches a run). --dry-run counts what "
        "would be deleted and deletes nothing.",
    )
    retention.add_argument(
        "--dry-run", action="store_true", help="count the expired rows; delete nothing"
    )
    retention.add_argument(
        "--invalid-log-days", type=int, metavar="DAYS", help="keep invalid-row logs this long"
    )
    retention.add_argument(
        "--provider-call-days", type=int, metavar="DAYS", help="keep provider calls this long"
    )
    retention.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL} or SQLite")
    retention.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object only: {"dry_run", "tables": [{"table", "deleted", ...}]}',
    )

    item_history = commands.add_parser(
        "history",
        help="an item's price, availability and listing history",
        description="Every change of one catalog item's price, currency, availability or "
        "listing (first listed, delisted by a full-snapshot source, listed again), oldest "
        "first, each with the file it came from. An ingest that changed none of them adds "
        "nothing. Exit 1 when no item has the SKU.",
    )
    item_history.add_argument("sku", help="the item's SKU, as in the files")
    item_history.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL} or SQLite")
    item_history.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object only: {"sku", "item": {...}, "history": [{"observed_at", '
        '"price", "currency", "availability", "listed", "changes", "object_key", ...}]}',
    )

    worker = commands.add_parser(
        "worker",
        help="start a Celery worker that executes run steps (CATALOG_EXECUTOR=celery)",
        description="A Celery worker for catalog_executor's celery mode: it takes the steps "
        "of runs from the broker in $CATALOG_CELERY_BROKER_URL (Redis) and executes them "
        "with this machine's environment, which must name the same catalog database and "
        "bucket as the runs' (and DAGSTER_HOME the same instance, on PostgreSQL across "
        "machines). Start one per machine, or several; stop with Ctrl-C (a warm shutdown: "
        "running steps finish).",
    )
    worker.add_argument(
        "--name", help="the worker's name (default: catalog-PID), unique per machine"
    )
    worker.add_argument(
        "--queue",
        action="append",
        choices=QUEUES,
        help="a queue to take steps from, repeatable (default: all: ingest for the plan, "
        "chunk and finalize steps, derived for classification, embeddings and playcounts, "
        "dagster for the rest); a worker per queue keeps a slow provider from starving ingest",
    )
    worker.add_argument(
        "--concurrency",
        type=int,
        help="steps at a time (default: one per core)",
    )

    database = commands.add_parser("db", help="database maintenance")
    database_commands = database.add_subparsers(dest="db_command", required=True)
    upgrade = database_commands.add_parser("upgrade", help="apply migrations up to the newest")
    upgrade.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL} or SQLite")
    return parser


def _run(arguments: argparse.Namespace) -> int:
    if arguments.command == "db":
        return _upgrade()
    if arguments.command == "worker":
        return _start_worker(arguments)
    from catalog_pipeline.observability import configure_python_logging

    configure_python_logging()
    _check_counts(arguments)
    if arguments.command in ("embed", "search", "similar"):
        return _run_embeddings_command(arguments)
    if arguments.command in ("status", "classify", "playcounts", "retention", "history"):
        return _run_catalog_command(arguments)
    if arguments.command == "repair":
        from catalog_pipeline.repair import run_repair_command

        return run_repair_command(
            ingest_session(), arguments.key, force=arguments.force, json_mode=arguments.json
        )
    if arguments.command == "demo":
        _write_demo(arguments.rows, quiet=arguments.json)
    results, skipped = ingest_bucket(progress=progress_wanted(arguments.json))
    if arguments.json:
        print(
            json.dumps(
                {
                    "files": [asdict(result) for result in results],
                    "skipped": [asdict(entry) for entry in skipped],
                }
            )
        )
    else:
        print(format_summary(results))
        if skipped:
            print(format_skipped(skipped))
        if arguments.command == "demo":
            print(DEMO_HINT.format(database=_database_description()))
    failed = [result for result in results if result.status == "failed"]
    if failed:
        names = ", ".join(result.object_key for result in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        print(
            f"catalog-pipeline: {len(failed)} file{'s' * (len(failed) > 1)} failed ({names}"
            f"{more}); the reason is in `rejected_reason` and in source_files.error. Fix the "
            "cause and run the same command again: completed files re-ingest as no-ops.",
            file=sys.stderr,
        )
        return EXIT_FILE_FAILED
    return EXIT_OK


def _start_worker(arguments: argparse.Namespace) -> int:
    """Check the settings and the broker, then become `celery worker` (exec: signals such
    as Ctrl-C and a supervisor's SIGTERM reach Celery itself)."""
    if arguments.concurrency is not None and arguments.concurrency < 1:
        raise UsageError(f"--concurrency {arguments.concurrency}: give 1 or more")
    if arguments.name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", arguments.name):
        raise UsageError(f"--name {arguments.name!r}: use letters, digits, '.', '_' and '-'")
    _check_celery()
    queues = ",".join(dict.fromkeys(arguments.queue or QUEUES))
    name = arguments.name or f"catalog-{os.getpid()}"
    command = [
        sys.executable, "-m", "celery", "-A", "catalog_pipeline.worker_app", "worker",
        "--hostname", f"{name}@%h", "--queues", queues, "--loglevel", "INFO",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    if arguments.concurrency is not None:
        command += ["--concurrency", str(arguments.concurrency)]
    print(f"catalog-pipeline: worker {name} on queues {queues}", file=sys.stderr, flush=True)
    os.execv(sys.executable, command)
    return EXIT_OK  # not reached


def _check_executor() -> None:
    """`CATALOG_EXECUTOR` and, for `celery`, its settings and broker: a usage error now
    rather than every file failing on them."""
    from catalog_pipeline.workers import CelerySettingsError

    try:
        celery = executor_choice() == "celery"
    except CelerySettingsError as error:
        raise UsageError(str(error)) from None
    if celery:
        _check_celery()


def _check_celery() -> None:
    """The Celery settings, and a broker that answers; else a usage error."""
    from catalog_pipeline.workers import CelerySettings, CelerySettingsError, check_broker

    try:
        check_broker(CelerySettings.from_environment().broker_url)
    except CelerySettingsError as error:
        raise UsageError(str(error)) from None


def _check_counts(arguments: argparse.Namespace) -> None:
    """The count options any command has (`--limit`, the retention windows) are 0 or more."""
    for option in ("limit", "invalid_log_days", "provider_call_days"):
        value = getattr(arguments, option, None)
        if value is not None and value < 0:
            raise UsageError(f"--{option.replace('_', '-')} {value}: give 0 or more")


def _run_embeddings_command(arguments: argparse.Namespace) -> int:
    from catalog_pipeline import embeddings
    from catalog_pipeline.resources.catalog import CatalogDatabase, default_embedder

    embedder = default_embedder().process_config_and_initialize().build()
    engine = CatalogDatabase(url=settings.setting(settings.DATABASE_URL)).engine()
    if arguments.command == "embed":
        return embeddings.run_embed_command(
            engine,
            embedder,
            json_mode=arguments.json,
            force=arguments.force,
            limit=arguments.limit,
            retry_failed=arguments.retry_failed,
        )
    if arguments.command == "search":
        hits = embeddings.search_catalog(
            engine, embedder, arguments.text, arguments.limit, arguments.source
        )
    else:
        hits = embeddings.similar_items(engine, embedder, arguments.sku, arguments.limit)
    embeddings.print_hits(hits, arguments.json)
    return EXIT_OK


def _run_catalog_command(arguments: argparse.Namespace) -> int:
    """`status`, `classify`, `playcounts backfill`, `retention` and `history`: commands on the catalog
    database alone (no bucket), its URL checked first so a bad one is a usage error."""
    from catalog_pipeline import commands
    from catalog_pipeline.db.engine import make_engine

    if getattr(arguments, "since", None) is not None:
        try:
            commands.parse_since(arguments.since)
        except ValueError as error:
            raise UsageError(str(error)) from None
    _checked_engine(make_engine)
    url = settings.setting(settings.DATABASE_URL)
    if arguments.command == "status":
        from catalog_pipeline.resources.catalog import CatalogDatabase
        from catalog_pipeline.status import run_status_command

        engine = CatalogDatabase(url=url).engine()
        return run_status_command(engine, failed=arguments.failed, json_mode=arguments.json)
    if arguments.command == "history":
        return commands.run_history_command(url, arguments.sku, json_mode=arguments.json)
    if arguments.command == "classify":
        return commands.run_classify_command(
            url,
            limit=arguments.limit,
            force=arguments.force,
            retry_failed=arguments.retry_failed,
            json_mode=arguments.json,
        )
    if arguments.command == "playcounts":
        return commands.run_backfill_command(
            url,
            source=arguments.source,
            since=arguments.since,
            dry_run=arguments.dry_run,
            json_mode=arguments.json,
        )
    return commands.run_retention_command(
        url,
        dry_run=arguments.dry_run,
        json_mode=arguments.json,
        invalid_log_days=arguments.invalid_log_days,
        provider_call_days=arguments.provider_call_days,
    )


def _explain(error: BaseException) -> tuple[str, str]:
    """A sentence for an error that stopped the command, and what to do next."""
    from catalog_pipeline.core.alerts import redact_secrets
    from catalog_pipeline.core.bucket import BucketError
    from catalog_pipeline.core.errors import is_configuration_error, is_transient, root_cause

    # Our own sentences show URLs without passwords; a library's may quote one whole.
    message = str(error) if isinstance(error, UsageError) else redact_secrets(root_cause(error))
    if isinstance(error, UsageError | ValueError | BucketError):
        hint = "Check the command line and the CATALOG_* settings (see docs/configuration.md)."
    elif is_configuration_error(error):
        hint = (
            "No retry can fix this: check the host, user, password and database name of "
            f"--database-url or ${settings.DATABASE_URL}, then run again."
        )
    elif is_transient(error) or "still failing after" in message:
        hint = (
            "The bucket or the database did not answer within the retry budget "
            "(CATALOG_RETRY_BUDGET_S); check that it is up and reachable, then run again."
        )
    else:
        hint = "Nothing was changed by this error; fix its cause and run the command again."
    return message, hint


def _add_derivation_options(parser: argparse.ArgumentParser, verb: str, done: str) -> None:
    """The options `embed` and `classify` share: what to derive, and how to report it."""
    parser.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL} or SQLite")
    parser.add_argument("--limit", type=int, help=f"{verb} at most this many items in this run")
    parser.add_argument("--force", action="store_true", help=f"{verb} every item again")
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="also send items left out after repeated failures",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help=f'print a JSON summary only: {{"{done}": N, "skipped": N, "failed": N, ...}}',
    )


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bucket",
        help=f"bucket URL (default: ${settings.BUCKET_URL} or "
        f"{settings.DEFAULTS[settings.BUCKET_URL]})",
    )
    parser.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL} or SQLite")
    parser.add_argument(
        "--chunk-bytes",
        metavar="SIZE",
        help="target chunk size: bytes (65536) or a size like 512KiB, 64MiB, 1GiB, "
        f"{CHUNK_BYTES_RANGE} (default: ${settings.CHUNK_BYTES}, in bytes, or 64MiB)",
    )


def _apply_overrides(arguments: argparse.Namespace) -> None:
    """Command-line values become the environment the Dagster resources read; a chunk
    size, from either, is checked first."""
    chunk_bytes = getattr(arguments, "chunk_bytes", None)
    overrides = {
        settings.BUCKET_URL: getattr(arguments, "bucket", None),
        settings.DATABASE_URL: getattr(arguments, "database_url", None),
        settings.CHUNK_BYTES: None if chunk_bytes is None else parse_chunk_bytes(chunk_bytes),
    }
    if chunk_bytes is None and arguments.command != "db" and os.environ.get(settings.CHUNK_BYTES):
        # The resources read the variable as an integer, in this process and in
        # `dagster dev` alike: a size with a unit would work here and fail there.
        parse_chunk_bytes(
            os.environ[settings.CHUNK_BYTES],
            f"${settings.CHUNK_BYTES}",
            units=False,
        )
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = str(value)
    if arguments.command in ("ingest", "demo", "repair"):
        _check_snapshot_settings()


def _check_snapshot_settings() -> None:
    """The delisting settings make sense before any file is ingested with them."""
    from catalog_pipeline.core.errors import ConfigurationError
    from catalog_pipeline.core.snapshots import DEFAULT_HOLD_PERCENT, SnapshotPolicy

    text = os.environ.get(settings.DELIST_HOLD_PERCENT) or str(DEFAULT_HOLD_PERCENT)
    try:
        SnapshotPolicy.parse(settings.setting(settings.FULL_SNAPSHOT_SOURCES), int(text) / 100)
    except ValueError as error:
        if not isinstance(error, ConfigurationError):
            error = ConfigurationError(
                f"${settings.DELIST_HOLD_PERCENT} {text!r}: give a whole percentage, 1 to 100"
            )
        raise UsageError(str(error)) from None


def parse_chunk_bytes(text: str, source: str = "--chunk-bytes", *, units: bool = True) -> int:
    """The chunk size `text` gives: a whole number of bytes or (with `units`) a size like
    64MiB. `UsageError` naming `source`, the value and the allowed range when it is not a
    size from 1 KiB to 2 GiB: no size is clamped in silence."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        form = "a whole number of bytes" + (" or a size like 512KiB, 64MiB or 1GiB" * units)
        raise UsageError(f"{source} {text!r} is not a size: give {form}, {CHUNK_BYTES_RANGE}")
    value = int(match[1]) * _SIZE_UNITS[(match[2] or "B").lower()]
    if match[2] and not units:
        raise UsageError(
            f"{source} {text!r} has a unit, but it is read as a whole number of bytes "
            f"(by the Dagster resources too): write {value}; sizes run {CHUNK_BYTES_RANGE}"
        )
    if value < MIN_CHUNK_BYTES:
        problem = "is not a positive size" if value == 0 else "is below the smallest chunk"
    elif value > MAX_CHUNK_BYTES:
        problem = "is above what one step can hold"
    else:
        return value
    raise UsageError(
        f"{source} {text!r} ({value:,} bytes) {problem}: give a size {CHUNK_BYTES_RANGE}"
    )


def _upgrade() -> int:
    from catalog_pipeline.db.engine import current_revision, make_engine, upgrade

    engine = _checked_engine(make_engine)
    upgrade(engine)
    print(f"{_database_description()}: schema at revision {current_revision(engine)}")
    return 0


def _checked_engine(make_engine):
    import re

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        return make_engine()
    except (ArgumentError, NoSuchModuleError) as error:
        url = os.environ.get(settings.DATABASE_URL, "")
        try:  # the URL is shown, its password never
            parsed = make_url(url)
            if "password" in parsed.query:  # libpq takes it as a query parameter too
                parsed = parsed.update_query_dict({"password": "***"})
            shown = parsed.render_as_string(hide_password=True)
        except Exception:  # unparsable: its scheme only
            scheme = url.split("://", 1)[0] if "://" in url else ""
            shown = f"{scheme}://…" if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme) else "…"
        reason = str(error).replace(url, shown) if url else str(error)
        raise UsageError(
            f"database URL {shown!r} is not usable: {reason}; use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB"
        ) from None


def _database_description() -> str:
    from catalog_pipeline.db.engine import make_engine

    return make_engine().url.render_as_string(hide_password=True)


def _bucket():
    """The bucket the resources of this process point at (environment or defaults)."""
    from catalog_pipeline.resources.catalog import BucketResource

    return BucketResource(
        url=settings.setting(settings.BUCKET_URL),
        endpoint_url=settings.setting(settings.S3_ENDPOINT_URL),
    ).open()


def ingest_bucket(progress: bool = True) -> tuple[list[FileResult], list[SkippedObject]]:
    """Ingest every CSV object of the bucket, one `catalog_ingest_job` run per object;
    return their results and the objects skipped (hidden, not a CSV), with the reason.

    Runs go to the instance in `DAGSTER_HOME` when it is set (so they show in the UI),
    else to an ephemeral instance. A run that fails leaves its file `failed` with the
    root cause (and alerts, once), exactly as the run-failure sensor does for runs the
    daemon sees; the other files go on.
    """
    from catalog_pipeline.core.retry import retrying

    session = ingest_session()
    bucket = session.bucket
    objects, skipped = retrying(lambda: list_bucket(bucket), f"listing {bucket.url}")
    session.add_partitions(objects)
    results = []
    # The bar counts bytes, so its time left holds across files of any size; off a
    # terminal the line per file is the progress (a file is the unit that finishes).
    total_bytes = sum(info.size for info in objects)
    with Progress("ingest", total_bytes, "bytes", enabled=progress, plain_updates=False) as bar:
        for number, info in enumerate(objects, 1):
            bar.update(
                bar.completed, description=f"[{number}/{len(objects)}] {shorten(info.key, 28)}"
            )
            started = time.perf_counter()
            result = ingest_one(session, info).result
            results.append(result)
            seconds = time.perf_counter() - started
            rate = f"{result.rows_total / seconds:,.0f} rows/s" if seconds > 0 else ""
            line = (
                f"[{number}/{len(objects)}] {info.key}: {result.status}, "
                f"{result.rows_valid:,} valid, {result.rows_invalid:,} invalid "
                f"({seconds:.1f}s)"
            )
            bar.note(f"{line[:-1]}, {rate})" if bar.terminal and rate else line)
            bar.advance(info.size, detail=rate)
    return results, skipped


def list_bucket(bucket: Bucket) -> tuple[list[ObjectInfo], list[SkippedObject]]:
    """The bucket's CSV objects to ingest, and every other object with why it is skipped."""
    from catalog_pipeline.core.naming import skip_reason

    objects, skipped = [], []
    for info in bucket.list_objects(include_hidden=True):
        reason = skip_reason(info.key, hidden=bucket.hidden_reason(info.key))
        if reason is None:
            objects.append(info)
        else:
            skipped.append(SkippedObject(info.key, reason))
    return objects, skipped


@dataclass(frozen=True, slots=True)
class IngestSession:
    """What the CLI's ingest runs share: the job, the instance its runs go to, their run
    config, the bucket and the catalog database (migrated), and the resources with which
    a failed run's file is recorded `failed`."""

    job: dg.JobDefinition
    instance: dg.DagsterInstance
    run_config: dict
    bucket: Bucket
    engine: Engine
    failure_resources: tuple[CatalogDatabase, BucketResource]

    def add_partitions(self, objects: Sequence[ObjectInfo]) -> None:
        """Register the objects' `source_csvs` partitions (a known one is left as it is)."""
        from catalog_pipeline.assets.partitions import partition_key_for, source_csvs

        self.instance.add_dynamic_partitions(
            source_csvs.name, [partition_key_for(info.key) for info in objects]
        )


@dataclass(frozen=True, slots=True)
class IngestedObject:
    """One object's `catalog_ingest_job` run: its result, its run and its file row (None
    when the run left no row the database could be asked about)."""

    result: FileResult
    run_id: str
    source_file_id: int | None


def ingest_session() -> IngestSession:
    """Set up the ingest runs of this process (see `ingest_bucket`)."""
    import dagster as dg

    from catalog_pipeline.core.retry import retrying
    from catalog_pipeline.db.engine import make_engine
    from catalog_pipeline.definitions import build_definitions
    from catalog_pipeline.jobs import INGEST_JOB
    from catalog_pipeline.observability import json_logs_enabled
    from catalog_pipeline.resources.catalog import BucketResource, CatalogDatabase

    _check_executor()
    definitions = build_definitions()
    job = definitions.resolve_job_def(INGEST_JOB)
    bucket = _bucket()
    _checked_engine(make_engine)
    catalog_db = CatalogDatabase(url=settings.setting(settings.DATABASE_URL))
    engine = catalog_db.engine()
    # A bucket that does not exist is a usage error (the database is checked first, so a
    # wrong database URL is named even when the default bucket folder is not there yet).
    retrying(bucket.check, f"checking {bucket.url}")
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else None
    instance = instance or dg.DagsterInstance.ephemeral()
    # Step failures are reported below with their root cause; Dagster's own lines for
    # them carry stack traces, which a CLI user should not have to read.
    # With CATALOG_LOG_FORMAT=json the run logs are wanted, as JSON lines (no traces).
    level = "INFO" if json_logs_enabled() else "CRITICAL"
    quiet_logs = {"loggers": {"console": {"config": {"log_level": level}}}}
    failure_resources = (
        catalog_db,
        BucketResource(
            url=settings.setting(settings.BUCKET_URL),
            endpoint_url=settings.setting(settings.S3_ENDPOINT_URL),
        ),
    )
    return IngestSession(job, instance, quiet_logs, bucket, engine, failure_resources)


@cache
def _scratch_instance() -> dg.DagsterInstance:
    """Without DAGSTER_HOME, for a file whose chunk steps `catalog_executor` forks: a
    throwaway persistent instance in a temporary folder (removed at exit), made once and
    only then (making one costs about a second, which small files should not pay)."""
    import atexit
    import shutil
    import tempfile

    import dagster as dg

    from catalog_pipeline.observability import json_logs_enabled

    folder = tempfile.mkdtemp(prefix="catalog-pipeline-instance-")
    atexit.register(shutil.rmtree, folder, True)
    # Each forked step process logs "Executing step … in subprocess" through Dagster's
    # default console logger, whose level is the instance's `python_log_level` (DEBUG
    # unset): a line per chunk on the user's terminal. Kept for JSON logs (machines read
    # them), silenced otherwise.
    overrides: dict = {"telemetry": {"enabled": False}}
    if not json_logs_enabled():
        overrides["python_logs"] = {"python_log_level": "CRITICAL"}
    return dg.DagsterInstance.local_temp(folder, overrides=overrides)


def _run_instance(session: IngestSession, info: ObjectInfo) -> dg.DagsterInstance | None:
    """The persistent instance the object's run goes to, or None to run it in process on
    the session's ephemeral one. `catalog_executor`'s own rule decides: a persistent
    instance (DAGSTER_HOME) always; without one, a scratch instance only for an object it
    would fork chunk steps for, or for every object when the steps run on Celery workers
    (which then must run on this machine: workers elsewhere need DAGSTER_HOME on
    PostgreSQL), and in process otherwise."""
    from catalog_pipeline.assets.partitions import partition_key_for, source_csvs
    from catalog_pipeline.core.naming import compression_of
    from catalog_pipeline.executor import MULTIPROCESS, choose_execution

    if session.instance.is_persistent:
        return session.instance
    chunk_bytes = int(settings.setting(settings.CHUNK_BYTES) or 0)
    compression = compression_of(info.key)
    on_workers = executor_choice() == "celery"  # every step on the workers: an instance they read
    forks = choose_execution(info.size, chunk_bytes, compression=compression).mode == MULTIPROCESS
    if not (on_workers or forks):
        return None
    scratch = _scratch_instance()
    scratch.add_dynamic_partitions(source_csvs.name, [partition_key_for(info.key)])
    return scratch


def ingest_one(session: IngestSession, info: ObjectInfo) -> IngestedObject:
    """Run `catalog_ingest_job` for one object (its partition registered) on
    `catalog_executor`, as every launch path does, and report the file: completed or
    rejected from its row, else failed with the root cause, recorded on the file as the
    run-failure sensor would."""
    import dagster as dg

    from catalog_pipeline.assets.partitions import partition_key_for
    from catalog_pipeline.core.errors import root_cause
    from catalog_pipeline.core.retry import retrying
    from catalog_pipeline.db.ingest import latest_summary
    from catalog_pipeline.definitions import ingest_job
    from catalog_pipeline.executor import OBJECT_SIZE_TAG
    from catalog_pipeline.sensors.failures import record_failed_run, run_failure_reason

    engine = session.engine
    tags = {
        "catalog/object_key": info.key,
        "catalog/etag": info.etag,
        OBJECT_SIZE_TAG: str(info.size),
        "catalog/launched_by": "catalog-pipeline",
    }
    instance = _run_instance(session, info)
    if instance is not None:  # catalog_executor decides, and says so in the run log
        run = dg.execute_job(
            dg.reconstructable(ingest_job),
            instance,
            run_config=session.run_config,
            tags={**tags, "dagster/partition": partition_key_for(info.key)},
            raise_on_error=False,
        )
    else:  # a small object and no instance to keep runs in: in process, as it would decide
        instance = session.instance
        run = session.job.execute_in_process(
            partition_key=partition_key_for(info.key),
            instance=instance,
            raise_on_error=False,
            run_config=session.run_config,
            tags=tags,
        )
    reason = None
    try:
        if not run.success:
            reason = run_failure_reason(instance, run.run_id, "the run failed")
            record_failed_run(instance, run.dagster_run, reason, *session.failure_resources)
        summary = retrying(
            lambda: latest_summary(engine, info.key, info.etag), f"{info.key}: summary"
        )
    except Exception as error:  # the database is gone past the budget: say so, go on
        reason = reason or root_cause(error)
        print(f"{info.key}: could not record the outcome: {root_cause(error)}", file=sys.stderr)
        summary = None
    if not run.success or summary is None or summary.status not in ("completed", "rejected"):
        status = "failed"
        reason = reason or "the run ended without a record of the file"
    else:
        status = summary.status
    result = FileResult(
        object_key=info.key,
        status=status,
        rows_total=summary.rows_total if summary else 0,
        rows_valid=summary.rows_valid if summary else 0,
        rows_invalid=summary.rows_invalid if summary else 0,
        verified_row_count=summary.verified_row_count if summary else None,
        rejected_reason=reason if status == "failed" else summary.rejected_reason,
        delisted_items=summary.delisted_items if summary else None,
        delisting_held=summary.delisting_held if summary else None,
    )
    return IngestedObject(result, run.run_id, summary.source_file_id if summary else None)


def format_summary(results: list[FileResult]) -> str:
    if not results:
        return "no CSV objects in the bucket"
    width = max(len(result.object_key) for result in results)
    lines = [f"{'object':<{width}}  {'status':<9} {'rows':>10} {'valid':>10} {'invalid':>9}"]
    for result in results:
        lines.append(
            f"{result.object_key:<{width}}  {result.status:<9} {result.rows_total:>10,} "
            f"{result.rows_valid:>10,} {result.rows_invalid:>9,}"
        )
        if result.rejected_reason:
            lines.append(f"{'':<{width}}  ↳ {result.rejected_reason}")
        if result.delisting_held:
            lines.append(f"{'':<{width}}  ↳ {result.delisting_held}")
        elif result.delisted_items:
            lines.append(
                f"{'':<{width}}  ↳ delisted {result.delisted_items:,} items it no longer lists"
            )
    total = sum(result.rows_total for result in results)
    valid = sum(result.rows_valid for result in results)
    lines.append(
        f"{len(results)} files, {total:,} rows, {valid:,} valid, {total - valid:,} invalid"
    )
    return "\n".join(lines)


def format_skipped(skipped: list[SkippedObject]) -> str:
    """One line: how many objects were skipped, why, and the first few keys."""
    counts: dict[str, int] = {}
    for entry in skipped:
        kind = "hidden" if entry.reason.startswith("hidden") else entry.reason.split(":")[0]
        counts[kind] = counts.get(kind, 0) + 1
    kinds = ", ".join(f"{count} {kind}" for kind, count in counts.items())
    keys = ", ".join(entry.key for entry in skipped[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    noun = "object" if len(skipped) == 1 else "objects"
    return f"{len(skipped)} {noun} skipped ({kinds}): {keys}{more}; --json gives each reason"


def _write_demo(large_rows: int, quiet: bool) -> None:
    from catalog_pipeline.core import samples

    bucket = _bucket()
    existing = {info.key for info in bucket.list_objects()}
    for key, data in samples.demo_objects(large_rows):
        if key in existing:
            continue  # an unchanged object keeps its ETag, so a second demo ingests nothing new
        bucket.put(key, data() if callable(data) else data)
        if not quiet:
            print(f"wrote {bucket.url.rstrip('/')}/{key}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
