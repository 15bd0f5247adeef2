"""Find object versions the catalog has not seen: the bucket swept in key order, page by
page, for a time budget per call.

A call resumes after the last key the previous one handled, lists pages of `page_size`
objects (one ListObjectsV2 request on S3) and compares each page with the catalog until
its time budget (`CATALOG_SENSOR_LIST_BUDGET_SECONDS`, default 20 s), its request limit
or the end of the bucket; after the last key the next call starts again from the first.
So a new object is found within one sweep whatever its key's sort order, a re-upload (new
ETag) is found like a new object, and a call never acts on more than `request_limit` new
versions. Every call handles at least one object, so a sweep always moves on.

A page is compared with `source_files` in batches (one query per 500 keys), never with
the whole set of Dagster partitions. A listed version is *seen*, and skipped, when the
catalog has recorded it and either its partition exists (`has_partition`, asked only for
those versions, in one bounded query) or its partition is retired (a settled file older
than the partition retention, whose partition `partition_retention_job` deletes): so a
fresh Dagster instance re-requests what an older one ingested (a no-op on the catalog)
unless that is past retention. A version the catalog has not recorded but whose run this
sensor already requested (`run_requested`: a queued run that has not planned it yet) is
skipped too, neither probed nor requested again.

Empty objects and objects whose header cannot be read or lacks required columns are
recorded as rejected here, cheaply (a HEAD-sized ranged read), and never requested. A
compressed object's first bytes are decompressed for that (a corrupt start of the stream
is a rejection too). Hidden keys, among them the staged decompressed copies of compressed
objects (`.<name>.<etag>.staged.csv`), are never objects to ingest, whatever the bucket.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import Engine

from catalog_pipeline import ingest, settings
from catalog_pipeline.core.bucket import Bucket, ObjectInfo
from catalog_pipeline.core.chunking import MAX_HEADER_BYTES, header_from_prefix
from catalog_pipeline.core.compression import decompress_prefix
from catalog_pipeline.core.errors import (
    CatalogError,
    HeaderError,
    RetriesExhaustedError,
    is_transient,
    root_cause,
)
from catalog_pipeline.core.naming import compression_of, is_csv_key, is_hidden_key
from catalog_pipeline.core.retry import RetryPolicy, retrying
from catalog_pipeline.core.validation import MissingColumnsError, map_header
from catalog_pipeline.db import ingest as db
from catalog_pipeline.db.partitions import PartitionRetention, VersionState, version_states

LIST_BUDGET_SETTING = settings.SENSOR_LIST_BUDGET_SECONDS
LIST_BUDGET_SECONDS = 20.0
PAGE_SIZE = 1000  # objects per listing page: S3's ListObjectsV2 maximum
REQUEST_LIMIT = 500
SENSOR_RETRY_SECONDS = 30.0
HEADER_PROBE_BYTES = 64 * 1024
# A compressed object's probe: enough for a whole first zstd block (up to 128 KiB of
# compressed input however little it compresses) and a gzip header line many times over.
COMPRESSED_PROBE_BYTES = 256 * 1024

# What the Dagster layer answers for a page, in one bounded query each: the object keys of
# `infos` whose partition exists, and the (key, etag) versions whose run is requested.
PartitionLookup = Callable[[Sequence[ObjectInfo]], Collection[str]]
RunLookup = Callable[[Sequence[ObjectInfo]], Collection[tuple[str, str]]]

# Why a call stopped: the end of the bucket (the next call starts a new sweep), its time
# budget, its request limit, its scan limit, or a transient error after some progress.
END, BUDGET, REQUESTS, SCANNED, ERROR = "end", "budget", "request_limit", "scan_limit", "error"
_SEEN, _RETIRED, _PENDING = "seen", "retired", "pending"


@dataclass(frozen=True, slots=True)
class Rejection:
    info: ObjectInfo
    reason: str


@dataclass(slots=True)
class Discovery:
    """What one call found, and where the next one resumes ('' = a new sweep)."""

    new: list[ObjectInfo] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, error) to retry later
    scanned: int = 0  # objects listed
    handled: int = 0  # objects listed and settled: the next call starts after them
    next_after: str = ""
    pages: int = 0
    seen: int = 0  # recorded versions whose partition exists
    retired: int = 0  # recorded versions past partition retention
    pending: int = 0  # versions whose run was requested and has not recorded them yet
    stopped_by: str = END
    error: str | None = None  # the transient error that stopped the call early
    seconds: float = 0.0


def list_budget_seconds() -> float:
    """`CATALOG_SENSOR_LIST_BUDGET_SECONDS`: how long one tick lists and compares (20 s)."""
    value = os.environ.get(LIST_BUDGET_SETTING)
    if not value:
        return LIST_BUDGET_SECONDS
    try:
        budget = float(value)
    except ValueError:
        raise ValueError(f"{LIST_BUDGET_SETTING}={value!r}: give a number of seconds") from None
    if budget <= 0:
        raise ValueError(f"{LIST_BUDGET_SETTING}={value!r}: the budget must be positive")
    return budget


def discover(
    bucket: Bucket,
    engine: Engine,
    after: str,
    has_partition: PartitionLookup | None = None,
    *,
    run_requested: RunLookup | None = None,
    retention: PartitionRetention | None = None,
    budget_seconds: float | None = None,
    scan_limit: int | None = None,
    request_limit: int = REQUEST_LIMIT,
    page_size: int = PAGE_SIZE,
    prefetch: bool = True,
    clock: Callable[[], float] | None = None,
) -> Discovery:
    """Sweep on from key `after` for versions not yet ingested, for `budget_seconds`.

    Without `has_partition`, every recorded version counts as seen; without
    `run_requested`, no run counts as requested. `scan_limit` (None: the budget decides)
    caps the objects listed. A transient error of the bucket or the database is retried
    within the tick's retry budget (30 s); past it the error is raised when nothing was
    handled yet, else the call returns what it found up to there (`error`)."""
    budget = list_budget_seconds() if budget_seconds is None else budget_seconds
    clock = clock or time.monotonic
    started = clock()
    deadline = started + budget
    sweep = _Sweep(
        bucket,
        engine,
        has_partition,
        run_requested,
        retention or PartitionRetention(None),
        sensor_retry_policy(),
    )
    result = sweep.result
    result.next_after = after
    # Without a scan limit the next page is listed while this one is compared and probed
    # (on S3 the listing is mostly waiting for the server).
    listing = _Listing(bucket, after, sweep.policy, prefetch and scan_limit is None)
    try:
        _sweep_pages(sweep, listing, clock, deadline, scan_limit, request_limit, page_size)
    finally:
        listing.close()
    result.seconds = clock() - started
    return result


def _sweep_pages(
    sweep: _Sweep,
    listing: _Listing,
    clock: Callable[[], float],
    deadline: float,
    scan_limit: int | None,
    request_limit: int,
    page_size: int,
) -> None:
    result = sweep.result
    while True:
        if result.handled and clock() >= deadline:
            result.stopped_by = BUDGET
            return
        size = page_size if scan_limit is None else min(page_size, scan_limit - result.scanned)
        if size <= 0:
            result.stopped_by = SCANNED
            return
        try:
            page, exhausted = listing.page(size)
            verdicts = sweep.compare(page)
        except Exception as error:
            _stop_on(error, result)
            return
        result.pages += 1
        result.scanned += len(page)
        for info in page:
            verdict = verdicts.get(info.key)
            if isinstance(verdict, str) or verdict is None:  # seen, not a CSV, or hidden
                sweep.count(verdict)
            elif len(result.new) + len(result.rejected) >= request_limit:
                result.stopped_by = REQUESTS
                return
            elif result.handled and clock() >= deadline:
                result.stopped_by = BUDGET
                return
            else:
                try:
                    sweep.classify(info, verdict)
                except Exception as error:
                    _stop_on(error, result)
                    return
            result.next_after = info.key
            result.handled += 1
        if exhausted:
            result.next_after, result.stopped_by = "", END
            return


def _stop_on(error: Exception, result: Discovery) -> None:
    """A transient error (past its retries) ends the call: raised when it handled nothing
    (the tick is skipped, the cursor stays), else kept so that what it found is used."""
    transient = is_transient(error) or isinstance(error, RetriesExhaustedError)
    if not transient or not result.handled:
        raise error
    result.stopped_by, result.error = ERROR, str(root_cause(error))


class _Sweep:
    """One call's comparisons and probes, and what they found."""

    def __init__(
        self,
        bucket: Bucket,
        engine: Engine,
        has_partition: PartitionLookup | None,
        run_requested: RunLookup | None,
        retention: PartitionRetention,
        policy: RetryPolicy,
    ) -> None:
        self.bucket, self.engine, self.policy = bucket, engine, policy
        self.has_partition, self.run_requested = has_partition, run_requested
        self.retention = retention
        self.result = Discovery()

    def compare(self, page: list[ObjectInfo]) -> dict[str, str | tuple[ObjectInfo, object]]:
        """Each listed CSV object's verdict: `seen`, `retired` or `pending` (skip it), or
        (info, its recorded state or None) to probe and act on."""
        objects = [info for info in page if is_csv_key(info.key) and not is_hidden_key(info.key)]
        if not objects:
            return {}
        states = retrying(
            lambda: version_states(self.engine, [info.key for info in objects]),
            "catalog database: known versions",
            self.policy,
        )
        verdicts: dict[str, str | tuple[ObjectInfo, VersionState | None]] = {}
        recorded, unrecorded = [], []
        for info in objects:
            state = states.get((info.key, info.etag))
            if state is None:
                unrecorded.append(info)
            elif self.retention.retires(state):
                verdicts[info.key] = _RETIRED
            else:
                recorded.append((info, state))
        with_partition = self._ask(
            self.has_partition, [info for info, _ in recorded], "partitions", everything=True
        )
        for info, state in recorded:
            verdicts[info.key] = _SEEN if info.key in with_partition else (info, state)
        requested = self._ask(self.run_requested, unrecorded, "requested runs")
        for info in unrecorded:
            verdicts[info.key] = _PENDING if (info.key, info.etag) in requested else (info, None)
        return verdicts

    def _ask(self, lookup, infos: list[ObjectInfo], what: str, everything: bool = False):
        if not infos:
            return set()
        if lookup is None:  # nobody to ask: all partitions exist, no run was requested
            return {info.key for info in infos} if everything else set()
        return set(retrying(lambda: lookup(infos), f"dagster instance: {what}", self.policy) or ())

    def count(self, verdict: str | None) -> None:
        result = self.result
        if verdict == _SEEN:
            result.seen += 1
        elif verdict == _RETIRED:
            result.retired += 1
        elif verdict == _PENDING:
            result.pending += 1

    def classify(self, info: ObjectInfo, verdict: tuple[ObjectInfo, VersionState | None]) -> None:
        """Probe the object's header: new, rejected (recorded once), or skipped this sweep."""
        state = verdict[1]
        try:
            reason = rejection_reason(self.bucket, info)
        except CatalogError as error:  # overwritten while we looked, or the bucket throttled
            # past the tick's retry budget: the next sweep sees it
            self.result.skipped.append((info.key, str(error)))
            return
        if reason is None:
            self.result.new.append(info)
            return
        if state is None:
            retrying(
                lambda: db.record_rejection(self.engine, ingest.source_object(info), reason, None),
                f"{info.key}: recording the rejection",
                self.policy,
            )
        self.result.rejected.append(Rejection(info, reason))


class _Listing:
    """The bucket's objects after a key, a page at a time from one listing; a transient
    error lists again after the last key of the last page delivered. With `prefetch`, the
    next page is listed in a thread while the caller works on the one it has (one thread
    touches the listing at a time: `page` waits for it first)."""

    def __init__(self, bucket: Bucket, after: str, policy: RetryPolicy, prefetch: bool) -> None:
        self._bucket, self._after, self._policy = bucket, after, policy
        self._objects: Iterator[ObjectInfo] | None = None
        self._pool = (
            ThreadPoolExecutor(1, thread_name_prefix="bucket-listing") if prefetch else None
        )
        self._ahead: Future | None = None

    def page(self, size: int) -> tuple[list[ObjectInfo], bool]:
        """Up to `size` objects, and whether the listing reached the end."""
        if self._ahead is not None:
            ahead, self._ahead = self._ahead, None
            page, exhausted = ahead.result()
        else:
            page, exhausted = self._fetch(size)
        if self._pool is not None and not exhausted:
            self._ahead = self._pool.submit(self._fetch, size)
        return page, exhausted

    def close(self) -> None:
        """Stop listing ahead (a page still being listed is left to finish, unused)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _fetch(self, size: int) -> tuple[list[ObjectInfo], bool]:
        return retrying(lambda: self._next(size), f"listing {self._bucket.url}", self._policy)

    def _next(self, size: int) -> tuple[list[ObjectInfo], bool]:
        if self._objects is None:
            self._objects = iter(self._bucket.list_objects(start_after=self._after or None))
        page: list[ObjectInfo] = []
        try:
            for info in self._objects:
                page.append(info)
                if len(page) >= size:
                    break
        except Exception:
            self._objects = None
            raise
        if page:
            self._after = page[-1].key
        return page, len(page) < size


def sensor_retry_policy() -> RetryPolicy:
    """Transient errors in a sensor tick are retried for at most 30 s (a tick has about a
    minute); past that the tick is skipped and the next one starts where this one did."""
    configured = RetryPolicy.from_environment()
    return RetryPolicy(budget_seconds=min(SENSOR_RETRY_SECONDS, configured.budget_seconds))


def rejection_reason(bucket: Bucket, info: ObjectInfo) -> str | None:
    """Why the object cannot be ingested at all, from its first bytes; None if it can."""
    compression = compression_of(info.key)
    probe = HEADER_PROBE_BYTES if compression is None else COMPRESSED_PROBE_BYTES
    try:
        prefix = (
            b""
            if info.size == 0
            else retrying(
                lambda: bucket.read_range(info, 0, min(info.size, probe)),
                f"{info.key}: header probe",
                sensor_retry_policy(),
            )
        )
        size = info.size
        if compression is not None:
            prefix, size = _decompressed_start(prefix, compression, info)
        header = header_from_prefix(prefix, size)
        if header is not None:
            map_header(header)
    except (HeaderError, MissingColumnsError) as error:
        return str(error)
    return None


def _decompressed_start(prefix: bytes, compression: str, info: ObjectInfo) -> tuple[bytes, int]:
    """The decompressed start of a compressed object from its first bytes `prefix`, and
    the size to judge it by: the decompressed size when `prefix` held the whole object and
    decompressed within the header limit, else one byte more than was decompressed (the
    object goes on, so a header line cut short is not yet a verdict)."""
    whole = len(prefix) >= info.size
    limit = MAX_HEADER_BYTES + 1  # one byte past the longest header: as the planner judges
    start = decompress_prefix(prefix, compression, info.key, limit, whole=whole)
    if whole and len(start) < limit:
        return start, len(start)
    return start, len(start) + 1
