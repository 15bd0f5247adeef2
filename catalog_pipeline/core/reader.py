"""Turn one planned byte range into records with their byte offsets.

A chunk starts on a record boundary, so the scan starts outside quotes. The usual chunk
(valid UTF-8, LF or CRLF line ends, every quote closed) is decoded once and read by one
`csv.reader` pass over the whole text, with the record offsets from the scanner. Anything
else takes the careful path, which decodes each record on its own: an undecodable record
becomes an `encoding_error` record instead of failing the chunk, and its neighbours are
unaffected. Both paths yield the same records.

With the header's field count known, a regular chunk (every quote opens or closes a
field or doubles inside one) goes through Arrow's CSV parser instead, which reads it
several times faster than `csv`; on such input the two agree field for field (tested).
Records whose field count is off are left out of Arrow's input and read by `csv` one by
one, so they keep their place and their fields. Anything else falls back as above.
`read_chunk_columns` hands such a chunk over as Arrow columns (`ColumnarChunk`), for
validation by whole columns; `read_chunk` turns it into records like the other paths.

A record the scanner cut at an unclosed quote (see `core.records`) is `unclosed_quote`;
its neighbours are read as usual. A field over `csv`'s field size limit (128 KiB) makes
its record `field_too_long`.

A record holding a NUL byte is an `encoding_error` too: NUL is valid UTF-8, but no
PostgreSQL text can hold it (COPY would fail the whole chunk), so it is refused on every
database alike rather than stored on SQLite and lost on Postgres.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as arrow_csv

from catalog_pipeline.core.records import (
    COMMA,
    CR,
    DEFAULT_MAX_QUOTED_BYTES,
    DEFAULT_QUOTE_BOUNDS,
    LF,
    QUOTE,
    UTF8_BOM,
    QuoteBounds,
    RecordScanner,
)

MALFORMED_ROW = "malformed_row"
ENCODING_ERROR = "encoding_error"
UNCLOSED_QUOTE = "unclosed_quote"
FIELD_TOO_LONG = "field_too_long"
RAW_LOG_BYTES = 4096
# An unclosed-quote record is one line cut short of what it swallowed: logged whole (up to
# the quote bound), so the row can be recovered from the invalid log.
UNCLOSED_RAW_LOG_BYTES = DEFAULT_MAX_QUOTED_BYTES
_BLOCK_BYTES = 8 << 20


def raw_log_bytes(record: Record) -> int:
    """How many of a record's bytes the invalid log keeps."""
    return UNCLOSED_RAW_LOG_BYTES if record.error == UNCLOSED_QUOTE else RAW_LOG_BYTES


class Record(NamedTuple):
    """One logical CSV record: fields, or the reason it could not be parsed.

    `offset` and `end` are absolute byte offsets in the object (end excludes the line end).
    A named tuple: one is built per row, and a tuple builds several times faster than a
    frozen dataclass.
    """

    offset: int
    end: int
    fields: Sequence[str] | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ChunkRecords:
    """The records of one chunk plus the bytes they came from (for raw invalid-row logs)."""

    records: list[Record]
    data: bytes
    base: int

    def raw(self, record: Record, limit: int = RAW_LOG_BYTES) -> bytes:
        """The record's original bytes, at most `limit` of them."""
        return _raw(self.data, self.base, record, limit)


@dataclass(frozen=True, slots=True)
class ColumnarChunk:
    """A chunk read by Arrow: the records with the header's field count as one string
    column per field (`starts`/`ends` are their offsets), plus the records with another
    field count, read by `csv` (`others`)."""

    table: pa.Table
    starts: np.ndarray
    ends: np.ndarray
    others: list[Record]
    data: bytes
    base: int

    def records(self, rows: np.ndarray | None = None) -> list[Record]:
        """Records in object order: the table's (all, or those where `rows` is True) and
        the others."""
        table, starts, ends = self.table, self.starts, self.ends
        if rows is not None:
            table, starts, ends = table.filter(pa.array(rows)), starts[rows], ends[rows]
        fields = zip(*(column.to_pylist() for column in table.columns), strict=True)
        records = list(map(Record, starts.tolist(), ends.tolist(), fields))
        if self.others:
            records = sorted(records + self.others)
        return records

    def raw(self, record: Record, limit: int = RAW_LOG_BYTES) -> bytes:
        """The record's original bytes, at most `limit` of them."""
        return _raw(self.data, self.base, record, limit)


def _raw(data: bytes, base: int, record: Record, limit: int) -> bytes:
    start = record.offset - base
    return data[start : min(record.end - base, start + limit)]


def read_chunk(
    data: bytes,
    base: int,
    field_count: int | None = None,
    quote_bounds: QuoteBounds = DEFAULT_QUOTE_BOUNDS,
) -> ChunkRecords:
    """Split a planned range `data` (starting at object offset `base`) into records.

    Blank lines are skipped (Python's `csv` yields no fields for them). `field_count`
    (the header's) enables the Arrow path; `quote_bounds` must be the plan's.
    """
    chunk = read_chunk_columns(data, base, field_count, quote_bounds)
    if isinstance(chunk, ColumnarChunk):
        return ChunkRecords(records=chunk.records(), data=data, base=base)
    return chunk


def read_chunk_columns(
    data: bytes,
    base: int,
    field_count: int | None,
    quote_bounds: QuoteBounds = DEFAULT_QUOTE_BOUNDS,
) -> ColumnarChunk | ChunkRecords:
    """Like `read_chunk`, but a chunk Arrow can read comes back as columns.

    A planned range ends on a record end, so its end is the end of the data for the
    scanner: a quote still open there is unclosed, as the planner found it.
    """
    scanner = RecordScanner(quote_bounds)
    quotes: list[np.ndarray] = [np.empty(0, np.int64)]
    newlines = np.concatenate([scanner.feed(data, base, quotes), scanner.finish()])
    starts, ends = _record_spans(data, base, newlines)
    if not scanner.unclosed:
        if field_count is not None:
            found = np.concatenate(quotes) - base
            columnar = _read_columnar(data, base, starts, ends, field_count, found)
            if columnar is not None:
                return columnar
        records = _parse_whole(data, starts.tolist(), ends.tolist())
        if records is not None:
            return ChunkRecords(records=records, data=data, base=base)
    cut = np.searchsorted(starts, [u.quote for u in scanner.unclosed], side="right") - 1
    spans = list(zip(starts.tolist(), ends.tolist(), strict=True))
    records = list(_parse(data, base, spans, frozenset(cut.tolist())))
    return ChunkRecords(records=records, data=data, base=base)


def _record_spans(data: bytes, base: int, newlines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absolute (start, end) of every non-blank record; the last may end without an LF."""
    size = len(data)
    starts = np.empty(len(newlines) + 1, dtype=np.int64)
    starts[0] = base
    starts[1:] = newlines + 1
    ends = np.append(newlines, base + size)
    if starts[-1] >= base + size:  # the data ends with an LF: no tail record
        starts, ends = starts[:-1], ends[:-1]
    lengths = ends - starts
    blank = lengths == 0
    single = np.flatnonzero(lengths == 1)
    if len(single):
        bytes_ = np.frombuffer(data, dtype=np.uint8)
        blank[single] = bytes_[starts[single] - base] == CR
    keep = ~blank
    return starts[keep], ends[keep]


def _plain(data: bytes) -> bool:
    """No NUL (an encoding_error) and no bare CR (a line end for csv, not the scanner)."""
    if b"\x00" in data:
        return False
    return b"\r" not in data or data.count(b"\r") == data.count(b"\r\n")


def _find(buffer: np.ndarray, byte: int) -> np.ndarray:
    """Positions of `byte` in `buffer`, found block by block: a comparison of the whole
    chunk would allocate a chunk-sized mask, and fresh memory costs a page fault per 4 KiB
    on first touch (measured: about 2 µs a row on this path); block-sized masks reuse
    memory the allocator already holds."""
    found = [
        np.flatnonzero(buffer[at : at + _BLOCK_BYTES] == byte) + at
        for at in range(0, len(buffer), _BLOCK_BYTES)
    ]
    return np.concatenate(found) if found else np.empty(0, np.int64)


def _regular_quotes(buffer: np.ndarray, quotes: np.ndarray) -> bool:
    """Every quote opens a field, closes one, or doubles inside one: the CSV on which
    Arrow's parser and Python's `csv` agree (they differ on `ab"c` or `"ab"c`).

    The chunk starts outside quotes, so quotes alternate open, close, open, …; a doubled
    quote inside a field is a close directly followed by an open.
    """
    if len(quotes) % 2:
        return False
    if not len(quotes):
        return True
    opens, closes = quotes[0::2], quotes[1::2]
    before = buffer[np.maximum(opens - 1, 0)]
    open_ok = (opens == 0) | (before == COMMA) | (before == LF)
    open_ok[1:] |= closes[:-1] == opens[1:] - 1
    after = buffer[np.minimum(closes + 1, len(buffer) - 1)]
    close_ok = (closes == len(buffer) - 1) | (after == COMMA) | (after == LF) | (after == CR)
    close_ok[:-1] |= opens[1:] == closes[:-1] + 1
    return bool(open_ok.all() and close_ok.all())


def _field_counts(buffer: np.ndarray, quotes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Fields per record (commas outside quotes + 1); `offsets` are record starts in
    `buffer`, whose quotes (at `quotes`) are regular.

    The commas are counted by position, not attributed one by one: the commas before
    each record start and before each quote are found by binary search in the sorted
    comma positions, so the work per comma is one comparison, not two searches."""
    commas = _find(buffer, COMMA)
    before_start = np.searchsorted(commas, offsets)
    per_record = np.diff(np.append(before_start, len(commas)))
    if len(quotes):
        opens, closes = quotes[0::2], quotes[1::2]
        quoted = np.searchsorted(commas, closes) - np.searchsorted(commas, opens)
        owners = np.searchsorted(offsets, opens, side="right") - 1
        per_record -= np.bincount(owners, weights=quoted, minlength=len(offsets)).astype(
            per_record.dtype
        )
    return per_record + 1


def _read_columnar(
    data: bytes,
    base: int,
    starts: np.ndarray,
    ends: np.ndarray,
    field_count: int,
    quotes: np.ndarray | None = None,
) -> ColumnarChunk | None:
    """Arrow's CSV parser over the chunk's well-formed records, or None to leave the chunk
    to `csv` (irregular quotes, a NUL or bare CR, invalid UTF-8, a field `csv` would
    refuse as too large, or any count that does not add up)."""
    if not len(starts) or not _plain(data) or len(data) >= 1 << 31:
        return None  # (Arrow's string offsets are 32-bit)
    if int((ends - starts).max()) > csv.field_size_limit():
        return None  # csv refuses such a field (malformed_row); Arrow would read it
    buffer = np.frombuffer(data, dtype=np.uint8)
    if quotes is None:  # (positions in `data`; the record scan has usually found them)
        quotes = _find(buffer, QUOTE)
    if not _regular_quotes(buffer, quotes):
        return None
    offsets = starts - base
    good = _field_counts(buffer, quotes, offsets) == field_count
    body = data
    others: list[Record] = []
    if not good.all():  # each well-formed record with its line end, in order
        nexts = np.append(offsets[1:], len(data))
        body = b"".join(
            data[start:stop]
            for start, stop in zip(offsets[good].tolist(), nexts[good].tolist(), strict=True)
        )
        for start, end in zip(starts[~good].tolist(), ends[~good].tolist(), strict=True):
            fields = _csv_fields(data[start - base : end - base])
            if fields is None:
                return None
            others.append(Record(start, end, fields))
    if body.startswith(UTF8_BOM):
        return None  # Arrow drops a BOM at the start of its input; csv keeps it as text
    names = [str(index) for index in range(field_count)]
    try:
        table = arrow_csv.read_csv(
            pa.py_buffer(body),
            read_options=arrow_csv.ReadOptions(
                column_names=names, use_threads=False, block_size=max(1 << 20, len(body) + 1)
            ),
            parse_options=arrow_csv.ParseOptions(newlines_in_values=True),
            convert_options=arrow_csv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, OverflowError):
        return None
    if table.num_rows != int(good.sum()):
        return None
    return ColumnarChunk(table, starts[good], ends[good], others, data, base)


def _csv_fields(raw: bytes) -> list[str] | None:
    """One record's fields as `csv` reads them, or None if it cannot be decoded."""
    try:
        text = raw.removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        return None
    return next(csv.reader(io.StringIO(text, newline="")), [])


def _parse_whole(data: bytes, starts: list[int], ends: list[int]) -> list[Record] | None:
    """One decode and one `csv` pass over the whole chunk, or None when the careful path
    must decide (invalid UTF-8, a NUL, a bare CR, a field over the csv size limit, or any
    disagreement with the scanner about where records end)."""
    if not _plain(data):
        return None  # a NUL or bare CR: decided record by record
    try:
        text = data.decode("utf-8")
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    except (UnicodeDecodeError, csv.Error):
        return None
    if len(rows) != len(starts):
        return None
    return list(map(Record, starts, ends, rows))


def _parse(
    data: bytes, base: int, spans: list[tuple[int, int]], unclosed: frozenset[int]
) -> Iterator[Record]:
    """Record by record; the spans at the indexes `unclosed` are unclosed quotes."""
    texts: list[str | None] = []
    for index, (start, end) in enumerate(spans):
        if index in unclosed:
            texts.append(None)
            continue
        stop = end - base
        if stop > start - base and data[stop - 1] == 0x0D:
            stop -= 1
        raw = data[start - base : stop]
        try:
            texts.append(None if b"\x00" in raw else raw.decode("utf-8"))
        except UnicodeDecodeError:
            texts.append(None)

    decodable = (text for text in texts if text is not None)
    reader = csv.reader(decodable)
    consumed = 0
    for index, ((start, end), text) in enumerate(zip(spans, texts, strict=True)):
        if text is None:
            reason = UNCLOSED_QUOTE if index in unclosed else ENCODING_ERROR
            yield Record(start, end, None, reason)
            continue
        consumed += 1
        try:
            fields = next(reader)
        except csv.Error as error:
            too_long = "field larger than field limit" in str(error)
            yield Record(start, end, None, FIELD_TOO_LONG if too_long else MALFORMED_ROW)
            continue
        if reader.line_num != consumed:
            # The scanner and the csv module disagreed on where a record ends. They share
            # one definition, so this is a bug; failing loudly beats misattributing rows.
            raise RuntimeError(f"record split out of step with csv at byte {start}")
        yield Record(start, end, fields)
