"""The chunked ingest of one scraper CSV: `plan_chunks` → `process_chunk` (one step per
chunk) → `finalize`, producing `catalog_items` and `invalid_item_logs` for a partition."""

import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import dagster as dg

from catalog_pipeline import ingest
from catalog_pipeline.assets.partitions import object_key_for, source_csvs
from catalog_pipeline.core.chunking import ByteRange
from catalog_pipeline.core.errors import ChunkError, ObjectChangedError, causes, root_cause
from catalog_pipeline.core.retry import retrying
from catalog_pipeline.core.validation import header_changes, map_header
from catalog_pipeline.db.ingest import (
    ChunkResult,
    FileSummary,
    load_chunk_results,
    previous_header,
)
from catalog_pipeline.resources.catalog import BucketResource, CatalogDatabase, IngestSettings
from catalog_pipeline.workers import INGEST_TAGS

CATALOG_ITEMS = dg.AssetKey("catalog_items")
INVALID_ITEM_LOGS = dg.AssetKey("invalid_item_logs")
ROWS_RECONCILE = "rows_reconcile"
FILE_ACCEPTED = "file_accepted"
TOP_REASONS = 10


def step_failure(error: Exception, **metadata) -> dg.Failure:
    """A step's failure as the UI and the failure handler show it: the root cause, not a
    wrapper, and no Dagster retry. Transient errors were already retried inside the step
    for the whole budget (see `core.retry`); permanent ones cannot be fixed by a retry."""
    innermost = causes(error)[-1]
    return dg.Failure(
        description=root_cause(error),
        metadata={**metadata, "error_class": type(innermost).__name__},
        allow_retries=False,
    )


@dataclass(frozen=True, slots=True)
class ChunkTask:
    """What one `process_chunk` step needs: the stored plan and its byte range."""

    planned: ingest.PlannedFile
    chunk: ByteRange | None  # None: the file has no chunks (rejected or header-only)


@dataclass(frozen=True, slots=True)
class PlanResult:
    planned: ingest.PlannedFile
    started_at: float


@dg.op(
    out={"plan": dg.Out(PlanResult), "chunks": dg.DynamicOut(ChunkTask)},
    pool="catalog_db",
    tags=INGEST_TAGS,
)
def plan_chunks(
    context: dg.OpExecutionContext,
    bucket: BucketResource,
    catalog_db: CatalogDatabase,
    ingest_settings: IngestSettings,
):
    """HEAD the object, find record-aligned chunk boundaries in one read, store the plan."""
    started_at = time.time()
    key = object_key_for(context.partition_key)
    try:
        planned = ingest.plan_object(
            bucket.open(),
            catalog_db.engine(),
            key,
            ingest_settings.chunk_bytes,
            context.run_id,
            holder_alive=lambda run_id: run_is_alive(context.instance, run_id),
            quote_bounds=ingest_settings.quote_bounds(),
        )
    except Exception as error:
        raise step_failure(error, object_key=key) from error
    if planned.rejected_reason:
        context.log.warning(f"{key}: rejected: {planned.rejected_reason}")
    else:
        context.log.info(
            f"{key} (ETag {planned.info.etag}, {planned.info.size:,} bytes): "
            f"{len(planned.chunks)} chunks, {planned.record_count:,} records"
        )
    yield dg.Output(PlanResult(planned, started_at), "plan")
    if not planned.chunks:
        # Dagster skips a fan-in step whose dynamic output is empty; one no-op step keeps
        # `finalize` (and the asset's materialization with its metadata) running.
        yield dg.DynamicOutput(
            ChunkTask(planned, None), mapping_key="no_chunks", output_name="chunks"
        )
    for chunk in planned.chunks:
        yield dg.DynamicOutput(
            ChunkTask(planned, chunk), mapping_key=chunk_name(chunk), output_name="chunks"
        )


def run_is_alive(instance: dg.DagsterInstance, run_id: str) -> bool | None:
    """Whether the run holding an object's lease is still going, as this instance knows
    it; None when the run is not in this instance (another instance, or the CLI's
    ephemeral one): its lease then holds until it expires."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return None
    return not run.is_finished


def take_over_if_reexecuting(
    context: dg.OpExecutionContext, planned: ingest.PlannedFile, catalog_db: CatalogDatabase
) -> None:
    """In a run that re-executes another (from failure, or a run retry), planning is not
    run again: the file and the object's lease move to this run (see `adopt_file`)."""
    run = context.dagster_run
    if run.parent_run_id and planned.rejected_reason is None:
        ingest.adopt_file(
            catalog_db.engine(),
            planned,
            run.run_id,
            run_family(run),
            holder_alive=lambda run_id: run_is_alive(context.instance, run_id),
        )


def run_family(run: dg.DagsterRun) -> list[str]:
    """The run and the runs it re-executes: together they hold one file's state."""
    return [i for i in dict.fromkeys([run.run_id, run.parent_run_id, run.root_run_id]) if i]


def chunk_name(chunk: ByteRange) -> str:
    return f"chunk_{chunk.index:05d}"


@dg.op(pool="catalog_db", tags=INGEST_TAGS)
def process_chunk(
    context: dg.OpExecutionContext,
    task: ChunkTask,
    bucket: BucketResource,
    catalog_db: CatalogDatabase,
) -> ingest.ChunkReport:
    """Read one planned byte range (pinned to the planned ETag), validate it, upsert it.

    Transient failures (database, bucket) are retried inside the step within the retry
    budget; the step fails, without a Dagster retry, on a permanent error or when the
    budget runs out. The next run (or re-execution from failure) redoes only this chunk.
    """
    if task.chunk is None:
        return ingest.ChunkReport.empty()
    key = task.planned.info.key
    try:
        take_over_if_reexecuting(context, task.planned, catalog_db)
        report = ingest.ingest_chunk(
            bucket.open(),
            catalog_db.engine(),
            task.planned,
            task.chunk,
            context.run_id,
            progress=context.log.info,  # a line per phase: read, validated, written
        )
    except ObjectChangedError as error:
        raise step_failure(
            error, object_key=error.object_key, planned_etag=error.planned_etag
        ) from error
    except ChunkError as error:
        raise step_failure(
            error,
            object_key=error.object_key,
            chunk=error.chunk_index,
            byte_offset=error.byte_offset,
        ) from error
    except Exception as error:  # e.g. the database unreachable for the whole budget
        raise step_failure(
            error, object_key=key, chunk=task.chunk.index, byte_offset=task.chunk.start
        ) from error
    context.log.info(
        f"chunk {report.chunk_index} [{report.byte_start:,}, {report.byte_end:,}): "
        f"{report.rows:,} rows, {report.invalid:,} invalid, {report.seconds:.2f}s"
    )
    return report


@dg.op(
    out={
        "catalog_items": dg.Out(dg.Nothing),
        "invalid_item_logs": dg.Out(dg.Nothing),
        "catalog_items_rows_reconcile": dg.Out(dg.Nothing, is_required=False),
        "catalog_items_file_accepted": dg.Out(dg.Nothing, is_required=False),
    },
    pool="catalog_db",
    tags=INGEST_TAGS,
)
def finalize(
    context: dg.OpExecutionContext,
    plan: PlanResult,
    reports: list[ingest.ChunkReport],
    catalog_db: CatalogDatabase,
    bucket: BucketResource,
    ingest_settings: IngestSettings,
):
    """Sum the stored chunk results, reconcile them with the planner's record count; a
    full-snapshot source's completed file delists what it no longer lists."""
    try:
        engine = catalog_db.engine()
        take_over_if_reexecuting(context, plan.planned, catalog_db)
        summary = ingest.finalize(
            engine,
            plan.planned,
            run_family(context.dagster_run),
            bucket.open(),
            ingest_settings.snapshot_policy(),
        )
        chunks = retrying(
            lambda: load_chunk_results(engine, summary.source_file_id),
            f"{summary.object_key}: chunk results",
        )
        previous = retrying(
            lambda: previous_header(engine, summary.source_file_id),
            f"{summary.object_key}: previous header",
        )
    except Exception as error:
        raise step_failure(error, object_key=plan.planned.info.key) from error
    reasons: Counter = Counter()
    for report in reports:
        reasons.update(report.reasons)
    seconds = time.time() - plan.started_at
    yield dg.Output(
        None,
        "catalog_items",
        metadata={
            **items_metadata(plan.planned, summary, chunks, seconds),
            **header_metadata(plan.planned.header, previous),
            "top_invalid_reasons": dg.MetadataValue.json(dict(reasons.most_common(TOP_REASONS))),
        },
    )
    if summary.delisting_held:
        context.log.warning(f"{summary.object_key}: {summary.delisting_held}")
    yield dg.Output(None, "invalid_item_logs", metadata=invalid_metadata(summary, reasons))
    yield reconcile_check(summary)
    yield dg.AssetCheckResult(
        asset_key=CATALOG_ITEMS,
        check_name=FILE_ACCEPTED,
        passed=summary.rejected_reason is None,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"rejected_reason": summary.rejected_reason or ""},
    )


def reconcile_check(summary: FileSummary) -> dg.AssetCheckResult:
    expected = summary.verified_row_count or 0
    counted = summary.rows_valid + summary.rows_invalid
    return dg.AssetCheckResult(
        asset_key=CATALOG_ITEMS,
        check_name=ROWS_RECONCILE,
        passed=expected == counted,
        metadata={
            "verified_row_count": expected,
            "rows_valid": summary.rows_valid,
            "rows_invalid": summary.rows_invalid,
            "difference": counted - expected,
        },
    )


def items_metadata(
    planned: ingest.PlannedFile, summary: FileSummary, chunks: list[ChunkResult], seconds: float
) -> dict:
    metadata = {
        "dagster/row_count": dg.MetadataValue.int(summary.rows_valid),
        "object_key": summary.object_key,
        "etag": summary.etag,
        "status": summary.status,
        "rows": summary.rows_total,
        "valid": summary.rows_valid,
        "invalid": summary.rows_invalid,
        "verified_row_count": summary.verified_row_count or 0,
        "bytes": planned.info.size,
        **compressed_metadata(planned),
        "chunks": summary.chunks_total,
        "seconds": dg.MetadataValue.float(round(seconds, 3)),
        "rows_per_second": dg.MetadataValue.float(
            round(summary.rows_total / seconds, 1) if seconds > 0 else 0.0
        ),
        "source_file_id": summary.source_file_id,
    }
    if summary.rejected_reason:
        metadata["rejected_reason"] = summary.rejected_reason
    if summary.delisted_items is not None:
        metadata["delisted_items"] = summary.delisted_items
    if summary.delisting_held:
        metadata["delisting_held"] = summary.delisting_held
    if chunks:
        metadata["chunk_results"] = chunk_table(chunks)
    return metadata


def compressed_metadata(planned: ingest.PlannedFile) -> dict:
    """A compressed object's decompressed size (`bytes` is the object's own)."""
    data = ingest.chunk_source(planned)
    if data is planned.info:
        return {}
    return {"decompressed_bytes": data.size, "staged_copy": data.key}


def header_metadata(
    header: Sequence[str], previous: tuple[str, list[str]] | None
) -> dict[str, dg.MetadataValue]:
    """The file's header, the columns kept as attributes, and how the header differs from
    the source's previous file (columns added, removed, renamed to another alias)."""
    if not header:
        return {}
    mapping = map_header(header)
    metadata = {
        "header": dg.MetadataValue.json(list(header)),
        "attribute_columns": dg.MetadataValue.json([name for name, _ in mapping.extras]),
    }
    if previous is not None:
        changes = header_changes(previous[1], header)
        metadata["header_changes"] = dg.MetadataValue.json(
            {"previous_file": previous[0], **changes}
        )
        metadata["header_changed"] = any(changes.values())
    return metadata


def chunk_table(chunks: list[ChunkResult]) -> dg.TableMetadataValue:
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn("chunk", "int"),
            dg.TableColumn("byte_start", "int"),
            dg.TableColumn("byte_end", "int"),
            dg.TableColumn("status", "string"),
            dg.TableColumn("rows", "int"),
            dg.TableColumn("valid", "int"),
            dg.TableColumn("invalid", "int"),
            dg.TableColumn("attempts", "int"),
            dg.TableColumn("seconds", "float"),
        ]
    )
    records = [
        dg.TableRecord(
            {
                "chunk": chunk.chunk_index,
                "byte_start": chunk.byte_start,
                "byte_end": chunk.byte_end,
                "status": chunk.status,
                "rows": chunk.rows,
                "valid": chunk.valid,
                "invalid": chunk.invalid,
                "attempts": chunk.attempts,
                "seconds": round(chunk.seconds or 0.0, 3),
            }
        )
        for chunk in chunks
    ]
    return dg.MetadataValue.table(records, schema=schema)


def invalid_metadata(summary: FileSummary, reasons: Counter) -> dict:
    top = reasons.most_common(TOP_REASONS)
    table = "\n".join(f"| `{reason}` | {count:,} |" for reason, count in top)
    return {
        "dagster/row_count": dg.MetadataValue.int(summary.rows_invalid),
        "invalid": summary.rows_invalid,
        "invalid_rate": dg.MetadataValue.float(
            round(summary.rows_invalid / summary.rows_total, 4) if summary.rows_total else 0.0
        ),
        "top_reasons": dg.MetadataValue.md(
            "| reason | rows |\n|---|---|\n" + table if top else "no invalid rows"
        ),
        "reasons": dg.MetadataValue.json(dict(top)),
    }


def partitioned_check(name: str, description: str) -> dg.AssetCheckSpec:
    """A check of `catalog_items` partitioned like the asset: each evaluation belongs to its
    file's partition, and the Checks tab compares it with that partition's
    materialization. Unpartitioned, the latest evaluation was compared with the latest
    materialization of any partition, and sensor runs finishing out of order read "Not
    evaluated". (Partitioned checks are a preview in Dagster 1.13: its warning is
    silenced here, once, rather than printed at every import.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(
            name, asset=CATALOG_ITEMS, description=description, partitions_def=source_csvs
        )


@dg.graph_multi_asset(
    outs={
        "catalog_items": dg.AssetOut(
            description="Catalog items upserted from each scraper CSV (one row per SKU; "
            "newer scrapes win, whatever order chunks and backfills finish in).",
            dagster_type=dg.Nothing,
        ),
        "invalid_item_logs": dg.AssetOut(
            description="Rows that failed validation, with every reason, the byte offset "
            "and the first 4 KiB of the raw record.",
            dagster_type=dg.Nothing,
        ),
    },
    partitions_def=source_csvs,
    check_specs=[
        partitioned_check(
            ROWS_RECONCILE,
            "The planner's independent record count equals valid + invalid rows.",
        ),
        partitioned_check(
            FILE_ACCEPTED,
            "The file could be read at all (not empty, readable header, required columns "
            "present). Warns with the rejection reason.",
        ),
    ],
    group_name="ingest",
)
def catalog_ingest():
    plan, chunks = plan_chunks()
    reports = chunks.map(process_chunk)
    items, invalid_logs, reconciled, accepted = finalize(plan, reports.collect())
    return {
        "catalog_items": items,
        "invalid_item_logs": invalid_logs,
        "catalog_items_rows_reconcile": reconciled,
        "catalog_items_file_accepted": accepted,
    }
