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
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from queue import Queue

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
    recorded_versions,
    version_states,
)

LIST_BUDGET_SETTING = settings.SENSOR_LIST_BUDGET_SECONDS
LIST_BUDGET_SECONDS = 20.0
LIST_CONCURRENCY_SETTING = settings.SENSOR_LIST_CONCURRENCY
MAX_LIST_CONCURRENCY = 32
# A sweep is cut into lanes only over a catalog of at least this many recorded versions a
# lane (a smaller bucket is listed in a few pages: one lane does).
MIN_LANE_VERSIONS = 2_000
LANE_PAGES_AHEAD = 1  # pages a lane lists ahead of the comparison, at most
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


# A lane of a sweep: the keys after [0] up to and including [1] (None: to the end).
Lane = tuple[str, str | None]


@dataclass(slots=True)
class Discovery:
    """What one call found, and where the next one resumes (`lanes`)."""

    new: list[ObjectInfo] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, error) to retry later
    scanned: int = 0  # objects listed
    handled: int = 0  # objects listed and settled: the next call starts after them
    # The sweep's lanes still to go, each (after, until]: the next call lists after the
    # last key this one handled in each; [] when the sweep is complete.
    lanes: list[Lane] = field(default_factory=list)
    pages: int = 0
    seen: int = 0  # recorded versions whose partition exists
    retired: int = 0  # recorded versions past partition retention
    pending: int = 0  # versions whose run was requested and has not recorded them yet
    stopped_by: str = END
    error: str | None = None  # the transient error that stopped the call early
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        """The sweep reached the end of every lane: the next call starts a new one."""
        return not self.lanes

    @property
    def next_after(self) -> str:
        """Where the first lane still to go resumes ('' once the sweep is complete)."""
        return self.lanes[0][0] if self.lanes else ""


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
    """How many lanes of `bucket` a new sweep lists side by side:
    `CATALOG_SENSOR_LIST_CONCURRENCY`, else the bucket's own: 4 on S3, where a page is
    mostly waiting for the server; 1 on a local folder, whose listing is the sensor's own
    CPU work (lanes side by side would only share it)."""
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
    lanes: Sequence[Lane] | None = None,
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
    caps the objects listed.

    `lanes` (from the previous call's `lanes`) resume a sweep cut into lanes; without
    them the sweep goes on after `after`, and a new one (`after` '') is cut into
    `concurrency` lanes (None: `list_concurrency`) at the catalog's recorded keys when
    there is no scan limit. Lanes are listed side by side, each in key order, and their
    pages compared as they come. A transient error of the bucket or the database is
    retried within the tick's retry budget (30 s); past it the error is raised when
    nothing was handled yet, else the call returns what it found up to there (`error`)."""
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
    ahead = prefetch and scan_limit is None
    if lanes is None:
        count = list_concurrency(bucket) if concurrency is None else concurrency
        lanes = sweep_lanes(engine, count, sweep.policy) if not after and ahead else [(after, None)]
    # Without a scan limit each lane lists its next pages while a page is compared and
    # probed (on S3 the listing is mostly waiting for the server).
    listing = _LaneListing(bucket, lanes, sweep.policy, page_size, ahead)
    progress = [low for low, _ in lanes]  # the last key handled in each lane
    try:
        _sweep_pages(sweep, listing, progress, clock, deadline, scan_limit, request_limit)
    finally:
        listing.close()
        result.lanes = [
            (progress[index], high)
            for index, (_, high) in enumerate(lanes)
            if not listing.finished[index]
        ]
    result.seconds = clock() - started
    return result


def _sweep_pages(
    sweep: _Sweep,
    listing: _LaneListing,
    progress: list[str],
    clock: Callable[[], float],
    deadline: float,
    scan_limit: int | None,
    request_limit: int,
) -> None:
    result = sweep.result
    while True:
        if result.handled and clock() >= deadline:
            result.stopped_by = BUDGET
            return
        size = None if scan_limit is None else scan_limit - result.scanned
        if size is not None and size <= 0:
            result.stopped_by = SCANNED
            return
        try:
            taken = listing.page(size)
        except Exception as error:
            _stop_on(error, result)
            return
        if taken is None:
            result.stopped_by = END
            return
        lane, page = taken
        try:
            verdicts = sweep.compare(page)
        except Exception as error:
            listing.unfinish(lane)  # its page goes to the next call, even a lane's last
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
            elif result.handled and clock() >= deadline:
                result.stopped_by = BUDGET
            else:
                try:
                    sweep.classify(info, verdict)
                except Exception as error:
                    _stop_on(error, result)
            if result.stopped_by != END:  # this object and the rest of the page: next call
                listing.unfinish(lane)
                return
            progress[lane] = info.key
            result.handled += 1


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


class _Stopped(Exception):
    """The sweep stopped listing while a lane waited to retry."""


class _Listing:
    """The bucket's objects after a key, a page at a time from one listing; a transient
    error is retried (within the policy) by listing again after the last key of the last
    page delivered. A wait between attempts ends early, with `_Stopped`, once `stop` is
    set: a tick that has ended does not go on retrying its lanes."""

    def __init__(
        self, bucket: Bucket, after: str, policy: RetryPolicy, stop: threading.Event
    ) -> None:
        self._bucket, self._after, self._policy, self._stop = bucket, after, policy, stop
        self._objects: Iterator[ObjectInfo] | None = None

    def page(self, size: int) -> tuple[list[ObjectInfo], bool]:
        """Up to `size` objects, and whether the listing reached the end."""
        return retrying(
            lambda: self._next(size),
            f"listing {self._bucket.url}",
            self._policy,
            sleep=self._wait,
        )

    def _wait(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _Stopped

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


def sweep_lanes(engine: Engine, count: int, policy: RetryPolicy) -> list[Lane]:
    """A new sweep's lanes: the key space cut into `count` lanes holding as many of the
    catalog's recorded versions each, or one lane when the catalog has too few (fewer
    than `MIN_LANE_VERSIONS` a lane). The cuts are put in S3's order (code points) and
    kept strictly increasing, as the database's collation may order keys otherwise:
    whatever they are, the lanes cover every key exactly once."""
    if count <= 1:
        return [("", None)]
    total = retrying(lambda: recorded_versions(engine), "catalog database: versions", policy)
    if total < count * MIN_LANE_VERSIONS:
        return [("", None)]
    every = -(-total // count)
    found = retrying(
        lambda: key_splits(engine, "", every, count - 1), "catalog database: lanes", policy
    )
    return lanes_between(sorted({key for key in found if key}))


def lanes_between(cuts: Sequence[str]) -> list[Lane]:
    """Lanes from strictly increasing, non-empty cut keys: ('', c1], (c1, c2], … (cn, end)."""
    bounds = ["", *cuts]
    return [(low, high) for low, high in zip(bounds, [*cuts, None], strict=True)]


class _LaneListing:
    """The sweep's lanes, listed each by a thread of its own (`ahead`), at most
    `LANE_PAGES_AHEAD` pages ahead of the comparison, their pages taken as they come;
    or one lane after the other, a page when asked (no `ahead`: exact for a scan limit).
    A lane's error (after its retries) is raised when its page is taken."""

    def __init__(
        self,
        bucket: Bucket,
        lanes: Sequence[Lane],
        policy: RetryPolicy,
        page_size: int,
        ahead: bool,
    ) -> None:
        self._stop = threading.Event()
        self._lanes = [
            _Lane(_Listing(bucket, low, policy, self._stop), high) for low, high in lanes
        ]
        self._size = page_size
        self.finished = [False] * len(lanes)
        self._taken: Queue = Queue()
        self._pool: ThreadPoolExecutor | None = None
        if ahead and lanes:
            self._pool = ThreadPoolExecutor(len(lanes), thread_name_prefix="bucket-listing")
            for index, lane in enumerate(self._lanes):
                self._pool.submit(lane.run, index, page_size, self._taken, self._stop)

    def page(self, size: int | None) -> tuple[int, list[ObjectInfo]] | None:
        """(lane, its next page), the lane marked finished when the page is its last; None
        when every lane is. `size` caps the page (only without `ahead`)."""
        while not all(self.finished):
            if self._pool is None:
                index = self.finished.index(False)
                page, last = self._lanes[index].next(min(size or self._size, self._size))
            else:
                index, item = self._taken.get()
                if isinstance(item, BaseException):
                    self._taken.put((index, item))  # raised again if asked again
                    raise item
                page, last = item
                self._lanes[index].slots.release()
            self.finished[index] = last
            if page or last:
                return index, page
        return None

    def unfinish(self, index: int) -> None:
        """The page taken from lane `index` was not wholly handled: the lane goes on."""
        self.finished[index] = False

    def close(self) -> None:
        """Stop listing (a request under way finishes, unused)."""
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


class _Lane:
    """One lane's listing: pages of keys after its start, up to its end (`high`)."""

    def __init__(self, listing: _Listing, high: str | None) -> None:
        self._listing, self._high = listing, high
        self.slots = threading.Semaphore(LANE_PAGES_AHEAD)

    def next(self, size: int) -> tuple[list[ObjectInfo], bool]:
        """The lane's next page and whether it is the lane's last."""
        page, exhausted = self._listing.page(size)
        if self._high is not None and page and page[-1].key > self._high:
            page = [info for info in page if info.key <= self._high]
            exhausted = True
        return page, exhausted

    def run(self, index: int, size: int, taken: Queue, stop: threading.Event) -> None:
        """List the lane into `taken`, waiting while `LANE_PAGES_AHEAD` pages are not yet
        taken, until its end or `stop`."""
        last = False
        while not last and not stop.is_set():
            if not self.slots.acquire(timeout=0.2):
                continue
            try:
                page, last = self.next(size)
            except BaseException as error:  # delivered to the sweep when it gets there
                taken.put((index, error))
                return
            taken.put((index, (page, last)))


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
