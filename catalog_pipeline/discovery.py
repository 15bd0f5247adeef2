"""Find object versions the catalog has not seen, a bounded slice of the bucket at a time.

The bucket is swept in key order, `scan_limit` objects per call, resuming after the
last key scanned; when a sweep reaches the end it starts again from the beginning. So
a new object is found within one sweep whatever its key's sort order, a re-upload (new
ETag) is found like a new object, and one call never lists more than `scan_limit`
objects or acts on more than `request_limit` new versions.

Empty objects and objects whose header cannot be read or lacks required columns are
recorded as rejected here, cheaply (a HEAD-sized ranged read), and never requested. A
compressed object's first bytes are decompressed for that (a corrupt start of the stream
is a rejection too). Hidden keys, among them the staged decompressed copies of compressed
objects (`.<name>.<etag>.staged.csv`), are never objects to ingest, whatever the bucket.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine

from catalog_pipeline import ingest
from catalog_pipeline.core.bucket import Bucket, ObjectInfo
from catalog_pipeline.core.chunking import MAX_HEADER_BYTES, header_from_prefix
from catalog_pipeline.core.compression import decompress_prefix
from catalog_pipeline.core.errors import CatalogError, HeaderError
from catalog_pipeline.core.naming import compression_of, is_csv_key, is_hidden_key
from catalog_pipeline.core.retry import RetryPolicy, retrying
from catalog_pipeline.core.validation import MissingColumnsError, map_header
from catalog_pipeline.db import ingest as db

SCAN_LIMIT = 1000
SENSOR_RETRY_SECONDS = 30.0
REQUEST_LIMIT = 100
HEADER_PROBE_BYTES = 64 * 1024
# A compressed object's probe: enough for a whole first zstd block (up to 128 KiB of
# compressed input however little it compresses) and a gzip header line many times over.
COMPRESSED_PROBE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Rejection:
    info: ObjectInfo
    reason: str


@dataclass(slots=True)
class Discovery:
    """What one bounded scan found, and where the next one resumes ('' = a new sweep)."""

    new: list[ObjectInfo] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, error) to retry later
    scanned: int = 0
    next_after: str = ""


def discover(
    bucket: Bucket,
    engine: Engine,
    after: str,
    is_requested: Callable[[ObjectInfo], bool],
    scan_limit: int = SCAN_LIMIT,
    request_limit: int = REQUEST_LIMIT,
) -> Discovery:
    """Scan up to `scan_limit` objects after key `after` for versions not yet ingested.

    A version counts as seen when `source_files` has it and `is_requested(info)` agrees
    (the Dagster layer passes "its partition exists"), so a fresh Dagster instance
    re-requests what an older one ingested; the re-ingest is a no-op on the catalog.
    """
    result = Discovery()
    policy = sensor_retry_policy()
    listed, exhausted = retrying(
        lambda: _list_slice(bucket, after, scan_limit), f"listing {bucket.url}", policy
    )
    result.scanned = len(listed)
    page = [info for info in listed if is_csv_key(info.key) and not is_hidden_key(info.key)]
    known = retrying(
        lambda: db.known_versions(engine, [info.key for info in page]),
        "catalog database: known versions",
        policy,
    )
    last_key = page[-1].key if page else after
    for info in page:
        if (info.key, info.etag) in known and is_requested(info):
            continue
        if len(result.new) + len(result.rejected) >= request_limit:
            exhausted = False
            last_key = _key_before(page, info)
            break
        _classify(bucket, engine, info, known, result)
    if exhausted:
        result.next_after = ""
    else:
        result.next_after = last_key or after
    return result


def sensor_retry_policy() -> RetryPolicy:
    """Transient errors in a sensor tick are retried for at most 30 s (a tick has about a
    minute); past that the tick is skipped and the next one starts where this one did."""
    configured = RetryPolicy.from_environment()
    return RetryPolicy(budget_seconds=min(SENSOR_RETRY_SECONDS, configured.budget_seconds))


def _list_slice(bucket: Bucket, after: str, scan_limit: int) -> tuple[list[ObjectInfo], bool]:
    """Up to `scan_limit` objects after `after`, and whether the listing reached the end."""
    listed: list[ObjectInfo] = []
    for info in bucket.list_objects(start_after=after or None):
        listed.append(info)
        if len(listed) >= scan_limit:
            return listed, False
    return listed, True


def _key_before(page: list[ObjectInfo], info: ObjectInfo) -> str:
    index = page.index(info)
    return page[index - 1].key if index else ""


def _classify(
    bucket: Bucket, engine: Engine, info: ObjectInfo, known: set, result: Discovery
) -> None:
    try:
        reason = rejection_reason(bucket, info)
    except CatalogError as error:  # overwritten while we looked, or the bucket throttled
        # past the tick's retry budget: the next sweep sees it
        result.skipped.append((info.key, str(error)))
        return
    if reason is None:
        result.new.append(info)
        return
    if (info.key, info.etag) not in known:
        db.record_rejection(engine, ingest.source_object(info), reason, None)
    result.rejected.append(Rejection(info, reason))


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
