"""Plan record-aligned byte ranges of a CSV object.

The planner reads the object once, sequentially, in blocks (the only way to know the
quoting state at an arbitrary offset: a newline inside a quoted description looks
exactly like a record end). While it streams, it records the header, cuts the data into
as few chunks as keep each within `target_chunk_bytes` (the size is known from HEAD), of
even size: a cut falls at the first record end at or after each multiple of the data
size over the chunk count, so no small remainder chunk runs alone at the end of a run.
It also counts the logical records: the independent reference that `finalize`
reconciles against.

Cost: one sequential read of the object (a streaming GET, not many ranged reads) and a
few numpy passes per block; memory is one block plus the header.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from catalog_pipeline.core.errors import HeaderError, PermanentError
from catalog_pipeline.core.records import (
    CR,
    DEFAULT_QUOTE_BOUNDS,
    LF,
    UTF8_BOM,
    QuoteBounds,
    RecordScanner,
)

# Each chunk is a Dagster step, which costs about 0.2 s to start (fork, instance, cold
# connection) whatever its size: 64 MiB (about 50,000 rows of 1.3 KB) keeps that a small
# share of the step while a step stays near 600 MB. Spark reads 128 MB splits.
DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024
MIN_CHUNK_BYTES = 1024
MAX_CHUNK_BYTES = 2 * 1024**3  # what one step holds in memory (a chunk is read whole)
MAX_HEADER_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ByteRange:
    """One chunk: bytes [start, end) of the object, starting and ending on record boundaries."""

    index: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """The plan of one object version: header, chunk ranges and the logical record count."""

    size: int
    header: tuple[str, ...]
    data_start: int
    chunks: tuple[ByteRange, ...]
    record_count: int
    has_bom: bool
    unclosed_quotes: int  # records cut at an opening quote that never closed (see core.records)
    quote_bounds: QuoteBounds = DEFAULT_QUOTE_BOUNDS


@dataclass(slots=True)
class _Planner:
    target: int
    size: int
    scanner: RecordScanner
    data_start: int | None = None
    header_bytes: bytearray | None = None
    header_start: int = 0  # after a BOM
    last_end: int = -1  # offset of the LF that ended the previous record (header included)
    tail_byte: int = LF  # the last byte read
    boundaries: list[int] | None = None
    next_cut: int = 0
    stride: float = 0.0  # the even chunk size: data bytes over the chunk count
    record_count: int = 0


class ChunkSizeError(PermanentError, ValueError):
    """The target chunk size is not one a step can work with."""


def checked_chunk_bytes(value: int) -> int:
    """`value` if it is a chunk size from 1 KiB to 2 GiB; `ChunkSizeError` otherwise. Never
    clamped in silence: a 0 meant as "default" or a typo must not become 1 KiB chunks."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ChunkSizeError(f"chunk size {value!r} is not a whole number of bytes")
    if not MIN_CHUNK_BYTES <= value <= MAX_CHUNK_BYTES:
        raise ChunkSizeError(
            f"chunk size {value:,} bytes is outside {MIN_CHUNK_BYTES:,} (1 KiB) .. "
            f"{MAX_CHUNK_BYTES:,} (2 GiB): set CATALOG_CHUNK_BYTES (or the ingest_settings "
            "resource's chunk_bytes) to a size in that range"
        )
    return value


def plan_chunks(
    blocks: Iterable[bytes],
    size: int,
    target_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    quote_bounds: QuoteBounds = DEFAULT_QUOTE_BOUNDS,
) -> ChunkPlan:
    """Plan the chunks of an object given as consecutive blocks of its bytes.

    Raises `HeaderError` for an empty object, an undecodable or unterminated header, or a
    header over 1 MiB. `quote_bounds` decide when an opening quote counts as unclosed; the
    chunks must be read with the same bounds (they are part of the plan).
    """
    target = checked_chunk_bytes(target_chunk_bytes)
    if size == 0:
        raise HeaderError("the object is empty (0 bytes): there is no header")
    scanner = RecordScanner(quote_bounds)
    planner = _Planner(target=target, size=size, scanner=scanner, header_bytes=bytearray())
    planner.boundaries = []
    offset = 0
    has_bom = False
    for block in _with_whole_bom(blocks):
        view, base = memoryview(block), offset
        if offset == 0 and block.startswith(UTF8_BOM):
            has_bom = True
            view, base = view[len(UTF8_BOM) :], len(UTF8_BOM)
            planner.header_start = base
        if planner.data_start is None:
            planner.header_bytes.extend(view)
        _consume(planner, scanner.feed(view, base))
        if planner.data_start is None and len(planner.header_bytes) > MAX_HEADER_BYTES:
            raise _no_header_end(bytes(planner.header_bytes), scanner.pending)
        if len(view):
            planner.tail_byte = view[-1]
        offset += len(block)
    if offset != size:
        raise HeaderError(f"read {offset} bytes but the object has {size}: it changed mid-read")
    _consume(planner, scanner.finish())

    start = len(UTF8_BOM) if has_bom else 0
    header_bytes = bytes(planner.header_bytes or b"")
    if planner.data_start is None:  # the header is the whole object: it has no LF
        _check_header_quotes(scanner, size)
        if b"\r" in header_bytes.rstrip(b"\r"):
            raise _no_header_end(header_bytes, False)
        planner.data_start = size
    else:
        tail_start = planner.last_end + 1
        if tail_start < size and not _tail_is_blank(planner, size):
            planner.record_count += 1  # a final record without a trailing newline
    header = _parse_header(header_bytes, start)

    cuts = [planner.data_start, *planner.boundaries]
    if not cuts or cuts[-1] != size:
        cuts.append(size)
    chunks = tuple(
        ByteRange(index=i, start=a, end=b)
        for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False))
        if b > a
    )
    return ChunkPlan(
        size=size,
        header=header,
        data_start=planner.data_start,
        chunks=chunks,
        record_count=planner.record_count,
        has_bom=has_bom,
        unclosed_quotes=len(scanner.unclosed),
        quote_bounds=quote_bounds,
    )


def _with_whole_bom(blocks: Iterable[bytes]) -> Iterable[bytes]:
    """Yield non-empty blocks, the first at least as long as a BOM (when the data allows)."""
    head = b""
    iterator = iter(blocks)
    for block in iterator:
        head += block
        if len(head) >= len(UTF8_BOM):
            break
    if head:
        yield head
    for block in iterator:
        if block:
            yield block


def _tail_is_blank(planner: _Planner, size: int) -> bool:
    """The bytes after the last record end are one CR (a blank CRLF line cut short)."""
    return size - (planner.last_end + 1) == 1 and planner.tail_byte == CR


def _no_header_end(prefix: bytes, quote_open: bool) -> HeaderError:
    """Why no header line end was found in `prefix` (over 1 MiB, or the whole object)."""
    if quote_open:
        return HeaderError(
            f"the header has a quoted field still open after {MAX_HEADER_BYTES:,} bytes"
        )
    if b"\r" in prefix.rstrip(b"\r"):
        return HeaderError(
            "the lines end in a bare CR (classic Mac line ends), with no LF within the "
            f"first {len(prefix):,} bytes: only LF or CRLF line ends are read; convert "
            "the file (for example `tr '\\r' '\\n'`)"
        )
    return HeaderError(f"no header line end within the first {MAX_HEADER_BYTES} bytes")


def _check_header_quotes(scanner: RecordScanner, header_end: int) -> None:
    for unclosed in scanner.unclosed:
        if unclosed.quote < header_end:
            raise HeaderError(
                f"the header has an unclosed quote (the quote at byte {unclosed.quote} "
                "never closes its field)"
            )


def _consume(planner: _Planner, ends: np.ndarray) -> None:
    """Count the records the scanner found ending at `ends` and place the chunk cuts."""
    cr_before = planner.scanner.cr_before
    if planner.data_start is None and len(ends):
        header_end = int(ends[0])
        _check_header_quotes(planner.scanner, header_end)
        del planner.header_bytes[header_end - planner.header_start :]
        planner.data_start = header_end + 1
        data_bytes = max(planner.size - planner.data_start, 1)
        planner.stride = data_bytes / -(-data_bytes // planner.target)
        planner.next_cut = planner.data_start + round(planner.stride)
        planner.last_end = header_end
        ends, cr_before = ends[1:], cr_before[1:]
    if len(ends):
        _count_records(planner, ends, cr_before)
        _cut(planner, ends)
        planner.last_end = int(ends[-1])


def _count_records(planner: _Planner, ends: np.ndarray, cr_before: np.ndarray) -> None:
    """Records end at `ends`; blank lines (empty, or a lone CR before the LF) are none."""
    starts = np.empty_like(ends)
    starts[0] = planner.last_end + 1
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    blank = (lengths == 0) | ((lengths == 1) & cr_before)
    planner.record_count += int(len(ends) - np.count_nonzero(blank))


def _cut(planner: _Planner, ends: np.ndarray) -> None:
    after = ends + 1
    while True:
        slot = int(np.searchsorted(after, planner.next_cut, side="left"))
        if slot >= len(after):
            return
        cut = int(after[slot])
        planner.boundaries.append(cut)
        cuts = len(planner.boundaries) + 1
        planner.next_cut = max(planner.data_start + round(cuts * planner.stride), cut + 1)


def _parse_header(raw: bytes, start: int) -> tuple[str, ...]:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HeaderError(
            f"the header is not valid UTF-8 at byte {start + error.start}: {error.reason}"
        ) from None
    if not text.strip():
        raise HeaderError("the header line is empty")
    try:
        rows = list(csv.reader([text]))
    except csv.Error as error:
        raise HeaderError(f"the header is not valid CSV: {error}") from None
    return tuple(rows[0]) if rows else ()


def header_from_prefix(
    prefix: bytes, size: int, quote_bounds: QuoteBounds = DEFAULT_QUOTE_BOUNDS
) -> tuple[str, ...] | None:
    """The header, read from the object's first bytes (a cheap check before planning).

    Returns None when `prefix` ends before the header line does; raises `HeaderError`
    for an empty object or a header that cannot be read.
    """
    if size == 0:
        raise HeaderError("the object is empty (0 bytes): there is no header")
    start = len(UTF8_BOM) if prefix.startswith(UTF8_BOM) else 0
    body = prefix[start:]
    scanner = RecordScanner(quote_bounds)
    ends = scanner.feed(body, start)
    whole = len(prefix) >= size
    if whole:
        ends = np.concatenate([ends, scanner.finish()])
    if len(ends) or whole:
        header_end = int(ends[0]) if len(ends) else len(prefix)
        _check_header_quotes(scanner, header_end)
        if not len(ends) and b"\r" in body.rstrip(b"\r"):
            raise _no_header_end(body, False)
        return _parse_header(prefix[start:header_end], start)
    if b"\n" not in body and b"\r" in body.rstrip(b"\r"):
        raise _no_header_end(body, False)
    if len(prefix) > MAX_HEADER_BYTES:
        raise _no_header_end(body, scanner.pending)
    return None
