"""The ingest steps, free of Dagster: plan an object, process one chunk, finalize.

The Dagster ops call these one step each; `ingest_object` runs them in sequence for the
core-only path (benchmarks, tests). Both write the same rows.

A compressed object (`.csv.gz`, `.csv.zst`) cannot be cut into byte ranges read on their
own, so its plan step streams it once, decompressing into a local temporary file, plans
the chunks of the decompressed bytes and uploads them as a hidden staged object next to
it (`naming.staged_key`). The chunk steps read byte ranges of that copy, pinned to its
ETag, exactly as they read a plain object; its byte offsets (chunks, invalid-row logs,
errors) are offsets in the decompressed content. `finalize` deletes the copy once the
file is done; a failed file keeps it, for re-execution from failure.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import multiprocessing
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from catalog_pipeline.core.bucket import BLOCK_BYTES, Bucket, ObjectInfo
from catalog_pipeline.core.chunking import ByteRange, ChunkPlan, plan_chunks
from catalog_pipeline.core.compression import decompressed_blocks
from catalog_pipeline.core.errors import (
    ChunkError,
    HeaderError,
    IncompleteFileError,
    ObjectChangedError,
    StagedCopyError,
    root_cause,
)
from catalog_pipeline.core.ingest import ChunkOutcome, process_chunk_bytes
from catalog_pipeline.core.memory import (
    without_transparent_hugepages,
    worker_allocator_environment,
)
from catalog_pipeline.core.naming import compression_of, parse_object_key, staged_key
from catalog_pipeline.core.read_ahead import read_ahead
from catalog_pipeline.core.records import DEFAULT_QUOTE_BOUNDS, QuoteBounds
from catalog_pipeline.core.retry import RetryPolicy, retrying
from catalog_pipeline.core.snapshots import SnapshotPolicy
from catalog_pipeline.core.validation import HeaderMapping, MissingColumnsError, map_header
from catalog_pipeline.db import failures as failures_db
from catalog_pipeline.db import ingest as db
from catalog_pipeline.db.engine import make_engine
from catalog_pipeline.db.repair import last_ingested_version

log = logging.getLogger("catalog_pipeline.ingest")
CLEANUP_RETRY_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class PlannedFile:
    """The stored plan of one object version; small enough to pass between steps."""

    source_file_id: int
    info: ObjectInfo
    header: tuple[str, ...]
    chunks: tuple[ByteRange, ...]
    record_count: int
    rejected_reason: str | None = None
    quote_bounds: QuoteBounds = DEFAULT_QUOTE_BOUNDS  # the plan's: its chunks are read with them
    # A compressed object's staged decompressed copy: the chunks are byte ranges of it
    # (`info` stays the compressed object, the file row's version). None for a plain
    # object, whose own bytes the chunks are, and in a plan pickled before it existed.
    data: ObjectInfo | None = None


def chunk_source(planned: PlannedFile) -> ObjectInfo:
    """The object whose byte ranges the plan's chunks are: the staged copy of a compressed
    object, else the object itself."""
    return getattr(planned, "data", None) or planned.info


@dataclass(frozen=True, slots=True)
class ChunkReport:
    chunk_index: int
    byte_start: int
    byte_end: int
    rows: int
    valid: int
    invalid: int
    reasons: dict[str, int]
    seconds: float

    @classmethod
    def empty(cls) -> ChunkReport:
        return cls(-1, 0, 0, 0, 0, 0, {}, 0.0)


def source_object(info: ObjectInfo) -> db.SourceObject:
    name = parse_object_key(info.key, info.last_modified)
    return db.SourceObject(
        object_key=info.key,
        etag=info.etag,
        size=info.size,
        last_modified=info.last_modified,
        source=name.source,
        observed_at=name.observed_at,
    )


def plan_object(
    bucket: Bucket,
    engine: Engine,
    key: str,
    chunk_bytes: int,
    run_id: str | None = None,
    holder_alive: Callable[[str], bool | None] | None = None,
    quote_bounds: QuoteBounds = DEFAULT_QUOTE_BOUNDS,
) -> PlannedFile:
    """Take the object's ingest lease, HEAD it, plan its chunks in one streaming read,
    and store the plan.

    A run (`run_id`) holds the object key's lease until it finalizes or its failure is
    recorded; while another live run holds it, this raises `LeaseHeldError` (one ingest
    of an object at a time, whatever launched it). A file that cannot be ingested at all
    (empty, unreadable header, missing required columns, a corrupt or truncated
    compressed stream) is stored as `rejected` with its reason and returned with no chunks.

    A compressed object is decompressed into a temporary file (disk: its decompressed
    size, in the system's temporary folder) and staged in the bucket for the chunk steps
    (see the module); a rejected one stages nothing.
    """
    if run_id is None:
        return _plan_object(bucket, engine, key, chunk_bytes, None, quote_bounds)
    retrying(
        lambda: failures_db.acquire_lease(engine, key, run_id, holder_alive),
        f"{key}: ingest lease",
    )
    try:
        return _plan_object(bucket, engine, key, chunk_bytes, run_id, quote_bounds)
    except BaseException:
        # Nothing of this run's is stored: the next run of the object need not wait.
        try:
            failures_db.release_lease(engine, key, [run_id])
        except Exception as error:
            log.warning("%s: could not release the ingest lease: %s", key, root_cause(error))
        raise


def _plan_object(
    bucket: Bucket,
    engine: Engine,
    key: str,
    chunk_bytes: int,
    run_id: str | None,
    quote_bounds: QuoteBounds,
) -> PlannedFile:
    info = retrying(lambda: bucket.head(key), f"{key}: HEAD")
    obj = source_object(info)
    compression = compression_of(key)
    previous = _previous_staged_version(engine, key) if compression else None
    staged: ObjectInfo | None = None
    with _scratch_folder(compression) as folder:
        copy = Path(folder or ".") / "decompressed.csv"  # used for a compressed object only
        try:
            if compression is None:
                plan = retrying(
                    lambda: scan_chunks(bucket, info, chunk_bytes, quote_bounds),
                    f"{key}: planning read",
                )
            else:
                plan = retrying(
                    lambda: scan_compressed(bucket, info, copy, chunk_bytes, quote_bounds),
                    f"{key}: planning read",
                )
            map_header(plan.header)
        except (HeaderError, MissingColumnsError) as error:
            reason = str(error)
            file_id = retrying(
                lambda: db.record_rejection(engine, obj, reason, run_id),
                f"{key}: recording the rejection",
            )
            _discard_previous_copy(bucket, key, info.etag, previous)
            return PlannedFile(file_id, info, (), (), 0, rejected_reason=reason)
        if compression is not None:
            staged = retrying(
                lambda: bucket.put_file(staged_key(key, info.etag), copy),
                f"{key}: staging its decompressed copy",
            )
            log.info("%s: %s bytes decompressed, staged as %s", key, f"{plan.size:,}", staged.key)
    file_id = retrying(
        lambda: db.record_plan(engine, obj, plan, chunk_bytes, run_id), f"{key}: storing the plan"
    )
    _discard_previous_copy(bucket, key, info.etag, previous)
    return _planned(file_id, info, plan, staged)


def _scratch_folder(compression: str | None):
    """A temporary folder for a compressed object's decompressed copy (none for a plain
    object); removed with what it holds once the plan step is done with it."""
    if compression is None:
        return contextlib.nullcontext(None)
    return tempfile.TemporaryDirectory(prefix="catalog-staging-")


def scan_chunks(
    bucket: Bucket,
    info: ObjectInfo,
    chunk_bytes: int,
    quote_bounds: QuoteBounds = DEFAULT_QUOTE_BOUNDS,
) -> ChunkPlan:
    """The chunk plan of one object version, from one streaming read of it (the next
    blocks are read while the current one is scanned)."""
    blocks = read_ahead(bucket.iter_blocks(info))
    return plan_chunks(blocks, info.size, chunk_bytes, quote_bounds)


def scan_compressed(
    bucket: Bucket,
    info: ObjectInfo,
    copy: Path,
    chunk_bytes: int,
    quote_bounds: QuoteBounds = DEFAULT_QUOTE_BOUNDS,
) -> ChunkPlan:
    """The chunk plan of a compressed object version's decompressed content, which is
    written to the local file `copy` on the way (one streaming read of the object, pinned
    to its ETag, then one read of `copy`: the planner needs the size first).

    Memory is a few blocks whatever the object's size; a corrupt or truncated stream
    raises `DecompressionError` (a `HeaderError`: the file is rejected)."""
    compression = compression_of(info.key)
    if compression is None:
        raise ValueError(f"{info.key} is not a compressed CSV key")
    compressed = read_ahead(bucket.iter_blocks(info))
    try:
        with copy.open("wb") as handle:  # each attempt starts the copy afresh
            for block in decompressed_blocks(compressed, compression, info.key):
                handle.write(block)
    finally:
        compressed.close()  # a broken stream stops the read at once
    blocks = read_ahead(_file_blocks(copy))
    return plan_chunks(blocks, copy.stat().st_size, chunk_bytes, quote_bounds)


def _file_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(block_bytes):
            yield block


def _previous_staged_version(engine: Engine, key: str) -> str | None:
    """The ETag of the version of `key` ingested before (whose staged copy a failed
    ingest kept), so that planning a newer version can delete that copy."""
    try:
        version = last_ingested_version(engine, key)
    except Exception as error:  # only a clean-up depends on it
        log.warning("%s: could not read its previous version: %s", key, root_cause(error))
        return None
    return version.etag if version is not None else None


def _discard_previous_copy(
    bucket: Bucket, key: str, current_etag: str, previous_etag: str | None
) -> None:
    """A newer version supersedes the previous one: its staged copy (kept if its ingest
    failed) is of no more use."""
    if previous_etag is not None and previous_etag != current_etag:
        discard_staged_copy(bucket, key, staged_key(key, previous_etag))


def discard_staged_copy(bucket: Bucket, key: str, staged: str) -> None:
    """Delete a staged decompressed copy. Best effort: a copy left behind costs only
    storage (it is hidden from every listing), so a failure is logged, never raised, and
    transient ones are retried for at most 30 s, not a step's whole budget."""
    budget = min(CLEANUP_RETRY_SECONDS, RetryPolicy.from_environment().budget_seconds)
    try:
        retrying(
            lambda: bucket.delete(staged),
            f"{key}: deleting the staged copy {staged}",
            RetryPolicy(budget_seconds=budget),
        )
    except Exception as error:
        log.warning("%s: could not delete its staged copy %s: %s", key, staged, root_cause(error))


def _planned(
    file_id: int, info: ObjectInfo, plan: ChunkPlan, data: ObjectInfo | None = None
) -> PlannedFile:
    return PlannedFile(
        file_id,
        info,
        plan.header,
        plan.chunks,
        plan.record_count,
        quote_bounds=plan.quote_bounds,
        data=data,
    )


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while a chunk is read and written.

    A chunk allocates a few hundred thousand tuples and lists (records, fields, rows) and
    no reference cycles; with the collector on, each full collection walks all of them
    plus everything the process has imported (all of Dagster in a step process).
    Measured on the first chunk of a fresh process: 31-39 µs a row with it, 19 without.
    The previous state is restored on the way out, so nested or concurrent use is safe.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def adopt_file(
    engine: Engine,
    planned: PlannedFile,
    run_id: str,
    run_family: Sequence[str],
    holder_alive: Callable[[str], bool | None] | None = None,
) -> None:
    """A run that re-executes an earlier one (re-execution from failure, a run retry)
    skips planning: it takes the file over here, before its first write, so that the
    file reads `ingesting` by this run again, a late failure record of the earlier run
    no longer matches it, and this run holds the object's lease."""
    key = planned.info.key
    retrying(
        lambda: failures_db.acquire_lease(engine, key, run_id, holder_alive),
        f"{key}: ingest lease",
    )
    retrying(
        lambda: failures_db.adopt_file(engine, planned.source_file_id, run_id, run_family),
        f"{key}: taking the file over from run {run_family[-1]}",
    )


def ingest_chunk(
    bucket: Bucket,
    engine: Engine,
    planned: PlannedFile,
    chunk: ByteRange,
    run_id: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ChunkReport:
    """Read one planned range (pinned to the planned ETag), validate it and store the result;
    `progress` hears a line as each phase (read, validate, write) ends. A compressed
    object's range is read from its staged decompressed copy (`chunk_source`).

    Raises `ObjectChangedError` if the object was overwritten since planning and
    `ChunkError` for anything else, after recording the failure on the chunk row.
    """
    without_transparent_hugepages()  # once per process: see core.memory
    with collector_paused():
        return _ingest_chunk(bucket, engine, planned, chunk, run_id, progress or _quiet)


def _quiet(_: str) -> None:
    pass


def _ingest_chunk(
    bucket: Bucket,
    engine: Engine,
    planned: PlannedFile,
    chunk: ByteRange,
    run_id: str | None,
    progress: Callable[[str], None],
) -> ChunkReport:
    started = time.perf_counter()
    key = planned.info.key
    where = f"{key}: chunk {chunk.index} at byte {chunk.start}"
    try:
        mapping: HeaderMapping = map_header(planned.header)
        data = retrying(lambda: _read_chunk(bucket, planned, chunk), f"{where}: read")
        if len(data) != chunk.size:
            raise ChunkError(
                key, chunk.index, chunk.start, f"read {len(data)} bytes, planned {chunk.size}"
            )
        progress(f"chunk {chunk.index}: read {len(data):,} bytes ({_since(started)})")
        # (A plan passed on by a run from before the bounds existed has none: the defaults.)
        bounds = getattr(planned, "quote_bounds", DEFAULT_QUOTE_BOUNDS)
        outcome: ChunkOutcome = process_chunk_bytes(data, chunk.start, mapping, bounds)
        progress(
            f"chunk {chunk.index}: validated {outcome.rows:,} rows, "
            f"{len(outcome.invalid):,} invalid ({_since(started)}); writing"
        )
        seconds = time.perf_counter() - started
        # One transaction: a retry after a dropped connection rewrites the same rows.
        retrying(
            lambda: db.write_chunk(
                engine, planned.source_file_id, chunk.index, outcome, run_id, seconds
            ),
            f"{where}: write",
        )
    except (ObjectChangedError, ChunkError) as error:
        _record_chunk_failure(engine, planned, chunk, str(error), run_id)
        raise
    except Exception as error:
        reason = root_cause(error).removeprefix(f"{where}: ")  # ChunkError says where
        wrapped = ChunkError(key, chunk.index, chunk.start, reason)
        _record_chunk_failure(engine, planned, chunk, str(wrapped), run_id)
        raise wrapped from error
    return ChunkReport(
        chunk_index=chunk.index,
        byte_start=chunk.start,
        byte_end=chunk.end,
        rows=outcome.rows,
        valid=outcome.valid_rows,
        invalid=len(outcome.invalid),
        reasons=dict(outcome.reasons),
        seconds=seconds,
    )


def _read_chunk(bucket: Bucket, planned: PlannedFile, chunk: ByteRange) -> bytes:
    source = chunk_source(planned)
    if source is planned.info:
        return bucket.read_range(source, chunk.start, chunk.end)
    try:
        return bucket.read_range(source, chunk.start, chunk.end)
    except ObjectChangedError as error:
        raise StagedCopyError(planned.info.key, source.key, error.detail) from None
    except FileNotFoundError:  # a local bucket's copy was deleted
        raise StagedCopyError(planned.info.key, source.key, "the copy was deleted") from None


def _since(started: float) -> str:
    return f"{time.perf_counter() - started:.2f}s in"


def _record_chunk_failure(
    engine: Engine, planned: PlannedFile, chunk: ByteRange, error: str, run_id: str | None
) -> None:
    """Best effort: the chunk row says why it failed. When the database is what failed,
    the run's failure handler marks the file instead (see `failures`)."""
    try:
        db.mark_chunk_failed(engine, planned.source_file_id, chunk.index, error, run_id)
    except Exception as failure:  # never hide the chunk's own error behind this one
        log.warning(
            "%s: chunk %d: could not record its failure: %s",
            planned.info.key,
            chunk.index,
            root_cause(failure),
        )


def finalize(
    engine: Engine,
    planned: PlannedFile,
    run_ids: Sequence[str | None] = (),
    bucket: Bucket | None = None,
    snapshot: SnapshotPolicy | None = None,
) -> db.FileSummary:
    """Sum the stored chunk results (a retried chunk counts once) into the file row, and
    release the lease that the run (`run_ids`: it and the runs it re-executes) holds.
    A completed file of a full-snapshot source (`snapshot`) delists what it no longer lists.

    Every chunk step reported success before this runs, yet a chunk may have no stored
    result: a database that crashed may lose the last commits it acknowledged (with
    `synchronous_commit` off, or a failover to a lagging replica). With `bucket`, such
    chunks are processed again here, so nothing is lost; without one, or if one still
    fails, the file is `failed` and `IncompleteFileError` names the chunks.
    """
    what = f"{planned.info.key}: finalize"
    if planned.rejected_reason is not None:

        def load() -> db.FileSummary:
            with engine.connect() as connection:
                return db.load_summary(connection, planned.source_file_id)

        summary = retrying(load, what)
    else:
        missing = retrying(lambda: _incomplete_chunks(engine, planned), f"{what}: results")
        if missing and bucket is not None:
            log.warning(
                "%s: chunks %s have no stored result although their steps succeeded (the "
                "database lost those commits?): processing them again",
                planned.info.key,
                ", ".join(map(str, missing)),
            )
            run_id = next((run_id for run_id in run_ids if run_id), None)
            for chunk in planned.chunks:
                if chunk.index in missing:
                    ingest_chunk(bucket, engine, planned, chunk, run_id)
        summary = retrying(lambda: db.finalize_file(engine, planned.source_file_id, snapshot), what)
        if summary.status == "failed":
            raise IncompleteFileError(
                planned.info.key,
                retrying(lambda: _incomplete_chunks(engine, planned), what),
            )
    if bucket is not None and (copy := getattr(planned, "data", None)) is not None:
        # The file is done: its staged copy goes (while the lease is held, so it is never
        # a new run's fresh copy of the same version).
        discard_staged_copy(bucket, planned.info.key, copy.key)
    holders = [run_id for run_id in run_ids if run_id]
    if holders:
        retrying(
            lambda: failures_db.release_lease(engine, planned.info.key, holders),
            f"{what}: lease",
        )
    return summary


def _incomplete_chunks(engine: Engine, planned: PlannedFile) -> tuple[int, ...]:
    with engine.connect() as connection:
        return failures_db.incomplete_chunks(connection, planned.source_file_id)


def ingest_object(
    bucket: Bucket,
    engine: Engine,
    key: str,
    chunk_bytes: int,
    run_id: str | None = None,
    workers: int = 1,
    snapshot: SnapshotPolicy | None = None,
) -> tuple[db.FileSummary, Counter]:
    """Plan, process every chunk and finalize: the core-only path (no Dagster).

    With `workers` > 1 the chunks run in that many worker processes (as the Dagster
    multiprocess executor runs chunk steps); the bucket must then be picklable and the
    engine's URL must reach the same database from another process.
    """
    reasons: Counter = Counter()
    run_id = run_id or f"core-{uuid.uuid4().hex}"
    try:
        if workers <= 1:
            planned = plan_object(bucket, engine, key, chunk_bytes, run_id)
            for chunk in planned.chunks:
                reasons.update(ingest_chunk(bucket, engine, planned, chunk, run_id).reasons)
            return finalize(engine, planned, [run_id], bucket, snapshot), reasons
        return _ingest_in_workers(
            bucket, engine, key, chunk_bytes, run_id, workers, reasons, snapshot
        )
    except Exception as error:
        # What the run-failure sensor does for a Dagster run: the file is `failed`, with
        # the reason, and its lease is free.
        try:
            failures_db.record_run_failure(engine, run_id, [], key, root_cause(error))
        except Exception as failure:  # never hide the ingest's own error behind this one
            log.warning("%s: could not record the failure: %s", key, root_cause(failure))
        raise


def _ingest_in_workers(
    bucket: Bucket,
    engine: Engine,
    key: str,
    chunk_bytes: int,
    run_id: str,
    workers: int,
    reasons: Counter,
    snapshot: SnapshotPolicy | None,
) -> tuple[db.FileSummary, Counter]:
    url = engine.url.render_as_string(hide_password=False)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        # The workers start (a fresh interpreter each, about a second of imports) while
        # this process plans the object, instead of after it. Each reads many chunks, so
        # it keeps the memory it frees between them (see core.memory).
        with worker_allocator_environment():
            for _ in range(workers):
                pool.submit(_start_worker, url)
        planned = plan_object(bucket, engine, key, chunk_bytes, run_id)
        futures = [
            pool.submit(_ingest_chunk_in_worker, bucket, url, planned, chunk, run_id)
            for chunk in planned.chunks
        ]
        for future in futures:
            reasons.update(future.result().reasons)
    return finalize(engine, planned, [run_id], bucket, snapshot), reasons


@functools.cache
def _worker_engine(url: str) -> Engine:
    return make_engine(url)


def _start_worker(url: str) -> None:
    _worker_engine(url)  # imports the database driver


def _ingest_chunk_in_worker(
    bucket: Bucket, url: str, planned: PlannedFile, chunk: ByteRange, run_id: str | None
) -> ChunkReport:
    return ingest_chunk(bucket, _worker_engine(url), planned, chunk, run_id)
