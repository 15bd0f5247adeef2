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
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from queue import Full, Queue

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
from catalog_pipeline.db.partitions import (
    PartitionRetention,
    VersionState,
    key_splits,
    version_states,
)

LIST_BUDGET_SETTING = settings.SENSOR_LIST_BUDGET_SECONDS
LIST_BUDGET_SECONDS = 20.0
LIST_CONCURRENCY_SETTING = settings.SENSOR_LIST_CONCURRENCY
MAX_LIST_CONCURRENCY = 32
# Key ranges listed side by side are this many recorded versions long (about 5 pages):
# short enough that a range listed ahead is whole by the time the sweep reaches it, long
# enough that the request a range spends past its end (S3 lists no end key) stays cheap.
RANGE_VERSIONS = 5_000
SPLITS_PER_QUERY = 64
RANGE_BUFFER_PAGES = 8  # pages a range lists ahead of the sweep, at most
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
    return settings.number_setting(
        LIST_BUDGET_SETTING,
        LIST_BUDGET_SECONDS,
        float,
        "give a number of seconds",
        (lambda budget: budget > 0, "the budget must be positive"),
    )


def list_concurrency(bucket: Bucket) -> int:
    """How many key ranges of `bucket` a sweep lists side by side:
    `CATALOG_SENSOR_LIST_CONCURRENCY`, else the bucket's own: 4 on S3, where a page is
    mostly waiting for the server; 1 on a local folder, whose listing is the sensor's own
    CPU work (ranges side by side would only share it)."""
    configured = configured_list_concurrency()
    return bucket.list_concurrency if configured is None else configured


def configured_list_concurrency() -> int | None:
    """`CATALOG_SENSOR_LIST_CONCURRENCY` (1 to 32), None when unset."""
    if not os.environ.get(LIST_CONCURRENCY_SETTING):
        return None
    return settings.number_setting(
        LIST_CONCURRENCY_SETTING,
        MAX_LIST_CONCURRENCY,  # not used: the setting is set
        int,
        "give a whole number of listings",
        (lambda count: 1 <= count <= MAX_LIST_CONCURRENCY, f"give 1 to {MAX_LIST_CONCURRENCY}"),
    )


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
    concurrency: int | None = None,
    clock: Callable[[], float] | None = None,
) -> Discovery:
    """Sweep on from key `after` for versions not yet ingested, for `budget_seconds`.

    Without `has_partition`, every recorded version counts as seen; without
    `run_requested`, no run counts as requested. `scan_limit` (None: the budget decides)
    caps the objects listed. `concurrency` (None: `list_concurrency`) key ranges are
    listed side by side when there is no scan limit; they are compared in key order, as
    one listing would deliver them. A transient error of the bucket or the database is retried
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
    # Without a scan limit the next pages are listed while this one is compared and probed
    # (on S3 the listing is mostly waiting for the server).
    ahead = prefetch and scan_limit is None
    lanes = list_concurrency(bucket) if concurrency is None else concurrency
    listing: _Listing | _RangeListing
    if ahead and lanes > 1:
        ranges = key_ranges(
            after,
            lambda low: retrying(
                lambda: key_splits(engine, low, RANGE_VERSIONS, SPLITS_PER_QUERY),
                "catalog database: key ranges",
                sweep.policy,
            ),
            SPLITS_PER_QUERY,
        )
        listing = _RangeListing(bucket, ranges, sweep.policy, lanes, page_size)
    else:
        listing = _Listing(bucket, after, sweep.policy, ahead)
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
        result.pages += 1 if page else 0
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


def key_ranges(
    after: str, splits: Callable[[str], Sequence[str]], batch: int
) -> Iterator[tuple[str, str | None]]:
    """The key space after `after` cut into consecutive ranges (low, high], the last one
    open (high None), at the keys `splits(low)` gives (the catalog's, `RANGE_VERSIONS`
    recorded versions apart, `batch` at a time, asked for as the sweep gets to them).

    The splits are put in S3's order (code points) and kept strictly increasing, as the
    database's collation may order keys otherwise: whatever they are, the ranges cover
    every key after `after` exactly once; only their balance depends on the splits."""
    low = after
    while True:
        found, start = splits(low), low
        for high in sorted(set(found)):
            if high > low:
                yield low, high
                low = high
        if len(found) < batch or low == start:  # no more splits, or none that moves on
            yield low, None
            return


_END = object()  # a range's listing reached its end


class _Range:
    """One key range (low, high], listed by a pool thread into a queue of pages."""

    def __init__(self, low: str, high: str | None) -> None:
        self.low, self.high = low, high
        self.pages: Queue = Queue(RANGE_BUFFER_PAGES)

    def list(self, bucket: Bucket, policy: RetryPolicy, size: int, stop: threading.Event) -> None:
        listing = _Listing(bucket, self.low, policy, prefetch=False)
        try:
            while not stop.is_set():
                page, exhausted = listing.page(size)
                if self.high is not None and page and page[-1].key > self.high:
                    page = [info for info in page if info.key <= self.high]
                    exhausted = True
                if page and not self._put(page, stop):
                    return
                if exhausted:
                    self._put(_END, stop)
                    return
        except BaseException as error:  # delivered to the sweep in key order
            self._put(error, stop)

    def _put(self, item: object, stop: threading.Event) -> bool:
        """Queue `item`, waiting while the range is `RANGE_BUFFER_PAGES` ahead of the
        sweep (a range of new objects only can be long); False when the listing stopped."""
        while not stop.is_set():
            try:
                self.pages.put(item, timeout=0.2)
                return True
            except Full:
                continue
        return False


class _RangeListing:
    """The bucket after a key as consecutive key ranges listed side by side by
    `concurrency` threads, delivered in key order: the pages of a range as it is listed,
    then the next range's, already listed meanwhile. At most `2 × concurrency` ranges are
    under way, each at most `RANGE_BUFFER_PAGES` ahead, so memory stays bounded however
    far the sweep goes and however many new objects a range holds; a range's error
    (after its retries) is raised when the sweep reaches it, as one listing's would be."""

    def __init__(
        self,
        bucket: Bucket,
        ranges: Iterator[tuple[str, str | None]],
        policy: RetryPolicy,
        concurrency: int,
        page_size: int,
    ) -> None:
        self._bucket, self._ranges, self._policy = bucket, ranges, policy
        self._size, self._in_flight = page_size, 2 * concurrency
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="bucket-listing")
        self._open: deque[_Range] = deque()
        self._last = False  # the open range (high None) is under way
        self._start_ranges()

    def page(self, size: int) -> tuple[list[ObjectInfo], bool]:
        """The next page in key order, and whether the listing reached the end (pages
        are `page_size` long as the ranges list them; `size` is not used)."""
        while self._open:
            current = self._open[0]
            item = current.pages.get()
            if isinstance(item, list):
                return item, False
            if isinstance(item, BaseException):
                current.pages.put(item)  # raised again if asked again
                raise item
            self._open.popleft()
            self._start_ranges()
        return [], True

    def close(self) -> None:
        """Stop listing (a request under way finishes, unused)."""
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _start_ranges(self) -> None:
        while not self._last and len(self._open) < self._in_flight:
            try:
                low, high = next(self._ranges)
            except StopIteration:
                self._last = True
                return
            listed = _Range(low, high)
            self._last = high is None
            self._open.append(listed)
            self._pool.submit(listed.list, self._bucket, self._policy, self._size, self._stop)


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
