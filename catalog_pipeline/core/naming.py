"""Object-key naming: which keys are CSVs (plain, gzip or zstd), source and scrape time
from a key, the hidden key of a compressed object's staged copy, and Dagster-safe
partition keys."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote

# A CSV object's name ends in one of these (any case); the compressed ones are read
# through `core.compression`.
CSV_SUFFIXES = {".csv": None, ".csv.gz": "gzip", ".csv.zst": "zstd"}
_CSV_SUFFIX = re.compile(r"\.csv(\.gz|\.zst)?$", re.IGNORECASE)
_TIMESTAMPED = re.compile(
    r"^(?P<source>.+)_(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2})\.csv(\.gz|\.zst)?$",
    re.IGNORECASE,
)
# The decompressed copy of a compressed object, staged in the bucket for its chunk steps
# (see `staged_key`): hidden, so no listing offers it as an object to ingest.
STAGED_SUFFIX = ".staged.csv"
# Characters Dagster handles badly in partition keys, plus '%' so encoding stays reversible.
_UNSAFE_CHARS = frozenset(",|[]%")
_DOT_RUN = re.compile(r"\.{3,}")
# Anything `encode_partition_key` changes; most keys have none and are returned as they are.
_NEEDS_ENCODING = re.compile(r"[,|\[\]%\x00-\x1f\x7f]|\.{3}")


@dataclass(frozen=True, slots=True)
class ObjectName:
    """What an object key says about its contents."""

    source: str
    observed_at: datetime


HIDDEN_REASON = "hidden file (name starts with '.')"


def is_csv_key(key: str) -> bool:
    """True for keys that name a CSV object, plain or compressed: ending `.csv`, `.csv.gz`
    or `.csv.zst` in any case (folders and other files are ignored)."""
    return _CSV_SUFFIX.search(key) is not None and not key.endswith("/")


def compression_of(key: str) -> str | None:
    """How a CSV key's object is compressed: None (`.csv`), "gzip" (`.csv.gz`) or "zstd"
    (`.csv.zst`); None too for a key that is not a CSV."""
    match = _CSV_SUFFIX.search(key)
    return CSV_SUFFIXES[match.group(0).lower()] if match else None


def staged_key(key: str, etag: str) -> str:
    """The hidden key of the decompressed copy of version `etag` of compressed object
    `key`, next to it: `[prefix/].<name>.<etag>.staged.csv`. One per object version, so
    a re-plan of the version overwrites its own copy and never another version's."""
    folder, _, name = key.rpartition("/")
    safe_etag = re.sub(r"[^A-Za-z0-9_-]", "_", etag)
    return f"{folder + '/' if folder else ''}.{name}.{safe_etag}{STAGED_SUFFIX}"


def is_hidden_key(key: str) -> bool:
    """True for keys whose file name starts with '.': hidden files, editors' and the
    system's files, and a local bucket's unfinished writes (`.<name>.tmp`)."""
    return key.rsplit("/", 1)[-1].startswith(".")


def hidden_file_reason(key: str) -> str:
    if key.endswith(STAGED_SUFFIX):
        return (
            f"{HIDDEN_REASON}: the decompressed copy of a compressed object, staged for its "
            "ingest (deleted when the ingest completes)"
        )
    if key.endswith(".tmp"):
        return f"{HIDDEN_REASON}: an unfinished write or another program's temporary file"
    return HIDDEN_REASON


def skip_reason(key: str, *, hidden: str | None = None) -> str | None:
    """Why a listed object is not ingested, or None for a CSV object to ingest.

    `hidden` is why the bucket hides the key, if it does (a local folder hides dot-files
    and links to files outside it, see `LocalBucket`); whatever the name ends in, that
    is the reason.
    """
    if hidden:
        return hidden
    if key.endswith("/"):
        return "not a CSV: a folder marker (the key ends in '/')"
    if is_hidden_key(key):  # whatever the bucket says: staged copies above all
        return hidden_file_reason(key)
    if not is_csv_key(key):
        return "not a CSV: the name does not end in '.csv', '.csv.gz' or '.csv.zst'"
    return None


def parse_object_key(key: str, last_modified: datetime) -> ObjectName:
    """Read the source and scrape time from `[prefix/]<source>_<YYYY-MM-DDTHH-MM-SS>.csv`
    (or `.csv.gz`, `.csv.zst`).

    Keys that do not follow the convention use the file stem (the name without its CSV
    suffix) as source and the object's last-modified time as `observed_at`.
    """
    base = key.rsplit("/", 1)[-1]
    match = _TIMESTAMPED.match(base)
    if match:
        try:
            observed = datetime.strptime(match["ts"], "%Y-%m-%dT%H-%M-%S").replace(tzinfo=UTC)
            return ObjectName(source=match["source"], observed_at=observed)
        except ValueError:
            pass  # e.g. month 13: not a timestamp after all
    stem = _CSV_SUFFIX.sub("", base)
    return ObjectName(source=stem or base, observed_at=_as_utc(last_modified))


def _as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _encode_char(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))


def encode_partition_key(object_key: str) -> str:
    """Percent-encode the characters Dagster mishandles; `decode_partition_key` reverses it."""
    if not _NEEDS_ENCODING.search(object_key):
        return object_key  # the common case, a sensor page of plain keys: one regex scan
    out = []
    for char in object_key:
        if char in _UNSAFE_CHARS or ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(_encode_char(char))
        else:
            out.append(char)
    encoded = "".join(out)
    return _DOT_RUN.sub(lambda m: "%2E" * len(m.group(0)), encoded)


def decode_partition_key(partition_key: str) -> str:
    """Inverse of `encode_partition_key`."""
    return unquote(partition_key, errors="strict")
