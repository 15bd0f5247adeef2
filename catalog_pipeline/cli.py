"""`catalog-pipeline`: headless ingest through the Dagster definitions, a demo, migrations."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from catalog_pipeline import settings

DEMO_HINT = """
Open the Dagster UI on this catalog:

    dagster dev            # from the repository root, then open http://127.0.0.1:3000

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="catalog-pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser(
        "ingest", help="ingest every CSV in the bucket through the Dagster job, in-process"
    )
    _add_target_options(ingest)
    ingest.add_argument("--json", action="store_true", help="print a JSON summary only")

    demo = commands.add_parser("demo", help="write sample scrapes to the bucket and ingest them")
    _add_target_options(demo)
    demo.add_argument("--rows", type=int, default=40_000, help="rows of the large sample file")
    demo.add_argument("--json", action="store_true", help="print a JSON summary only")

    database = commands.add_parser("db", help="database maintenance")
    database_commands = database.add_subparsers(dest="db_command", required=True)
    upgrade = database_commands.add_parser("upgrade", help="apply migrations up to the newest")
    upgrade.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL} or SQLite")

    arguments = parser.parse_args(argv)
    _apply_overrides(arguments)
    if arguments.command == "db":
        return _upgrade()
    if arguments.command == "demo":
        _write_demo(arguments.rows, quiet=arguments.json)
    results = ingest_bucket(progress=not arguments.json or sys.stderr.isatty())
    if arguments.json:
        print(json.dumps({"files": [asdict(result) for result in results]}))
    else:
        print(format_summary(results))
        if arguments.command == "demo":
            print(DEMO_HINT.format(database=_database_description()))
    return 1 if any(result.status == "failed" for result in results) else 0


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bucket",
        help=f"bucket URL (default: ${settings.BUCKET_URL} or "
        f"{settings.DEFAULTS[settings.BUCKET_URL]})",
    )
    parser.add_argument("--database-url", help=f"default: ${settings.DATABASE_URL} or SQLite")
    parser.add_argument("--chunk-bytes", type=int, help="target chunk size (default 64 MiB)")


def _apply_overrides(arguments: argparse.Namespace) -> None:
    """Command-line values become the environment the Dagster resources read."""
    overrides = {
        settings.BUCKET_URL: getattr(arguments, "bucket", None),
        settings.DATABASE_URL: getattr(arguments, "database_url", None),
        settings.CHUNK_BYTES: getattr(arguments, "chunk_bytes", None),
    }
    for name, value in overrides.items():
        if value is not None:
            os.environ[name] = str(value)


def _upgrade() -> int:
    from catalog_pipeline.db.engine import current_revision, make_engine, upgrade

    engine = make_engine()
    upgrade(engine)
    print(f"{_database_description()}: schema at revision {current_revision(engine)}")
    return 0


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


def ingest_bucket(progress: bool = True) -> list[FileResult]:
    """Ingest every CSV object of the bucket, one `catalog_ingest_job` run per object.

    Runs go to the instance in `DAGSTER_HOME` when it is set (so they show in the UI),
    else to an ephemeral instance.
    """
    import dagster as dg

    from catalog_pipeline.assets.partitions import partition_key_for, source_csvs
    from catalog_pipeline.core.naming import is_csv_key
    from catalog_pipeline.db.ingest import latest_summary
    from catalog_pipeline.definitions import build_definitions
    from catalog_pipeline.jobs import INGEST_JOB
    from catalog_pipeline.resources.catalog import CatalogDatabase

    definitions = build_definitions()
    job = definitions.resolve_job_def(INGEST_JOB)
    bucket = _bucket()
    engine = CatalogDatabase(url=settings.setting(settings.DATABASE_URL)).engine()
    objects = [info for info in bucket.list_objects() if is_csv_key(info.key)]
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else None
    instance = instance or dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(
        source_csvs.name, [partition_key_for(info.key) for info in objects]
    )
    quiet_logs = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    results = []
    for number, info in enumerate(objects, 1):
        started = time.perf_counter()
        run = job.execute_in_process(
            partition_key=partition_key_for(info.key),
            instance=instance,
            raise_on_error=False,
            run_config=quiet_logs,
            tags={"catalog/object_key": info.key, "catalog/launched_by": "catalog-pipeline"},
        )
        summary = latest_summary(engine, info.key)
        if not run.success or summary is None:
            status = "failed"
        else:
            status = "rejected" if summary.status == "rejected" else "completed"
        result = FileResult(
            object_key=info.key,
            status=status,
            rows_total=summary.rows_total if summary else 0,
            rows_valid=summary.rows_valid if summary else 0,
            rows_invalid=summary.rows_invalid if summary else 0,
            verified_row_count=summary.verified_row_count if summary else None,
            rejected_reason=(summary.rejected_reason if summary else None)
            or (_failure_reason(run) if status == "failed" else None),
        )
        results.append(result)
        if progress:
            print(
                f"[{number}/{len(objects)}] {info.key}: {status}, {result.rows_valid:,} valid, "
                f"{result.rows_invalid:,} invalid ({time.perf_counter() - started:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
    return results


def _failure_reason(run) -> str | None:
    for event in run.all_events:
        if event.is_step_failure and event.step_failure_data.error:
            return event.step_failure_data.error.message.strip().splitlines()[0]
    return None


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
    total = sum(result.rows_total for result in results)
    valid = sum(result.rows_valid for result in results)
    lines.append(
        f"{len(results)} files, {total:,} rows, {valid:,} valid, {total - valid:,} invalid"
    )
    return "\n".join(lines)


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
