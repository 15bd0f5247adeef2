"""Turn one planned byte range into records with their byte offsets.

A chunk starts on a record boundary, so the scan starts outside quotes. The usual chunk
(valid UTF-8, LF or CRLF line ends, every quote closed) is decoded once and read by one
`csv.reader` pass over the whole text, with the record offsets from the scanner. Anything
else takes the careful path, which decodes each record on its own: an undecodable record
becomes an `encoding_error` record instead of failing the chunk, and its neighbours are
unaffected. Both paths yield the same records.

A record holding a NUL byte is an `encoding_error` too: NUL is valid UTF-8, but no
PostgreSQL text can hold it (COPY would fail the whole chunk), so it is refused on every
database alike rather than stored on SQLite and lost on Postgres.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from catalog_pipeline.core.records import CR, RecordScanner

MALFORMED_ROW = "malformed_row"
ENCODING_ERROR = "encoding_error"
RAW_LOG_BYTES = 4096


class Record(NamedTuple):
    """One logical CSV record: fields, or the reason it could not be parsed.

    `offset` and `end` are absolute byte offsets in the object (end excludes the line end).
    A named tuple: one is built per row, and a tuple builds several times faster than a
    frozen dataclass.
    """

    offset: int
    end: int
    fields: list[str] | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ChunkRecords:
    """The records of one chunk plus the bytes they came from (for raw invalid-row logs)."""

    records: list[Record]
    data: bytes
    base: int

    def raw(self, record: Record, limit: int = RAW_LOG_BYTES) -> bytes:
        """The record's original bytes, at most `limit` of them."""
        start = record.offset - self.base
        return self.data[start : min(record.end - self.base, start + limit)]


def read_chunk(data: bytes, base: int, at_end_of_object: bool = True) -> ChunkRecords:
    """Split a record-aligned range `data` (starting at object offset `base`) into records.

    Blank lines are skipped (Python's `csv` yields no fields for them). A final record whose
    quote never closes is `malformed_row` when the range ends the object.
    """
    scanner = RecordScanner()
    starts, ends = _record_spans(data, base, scanner.feed(data, base))
    records = None
    if not scanner.inside_quotes:
        records = _parse_whole(data, starts, ends)
    if records is None:
        records = list(_parse(data, base, list(zip(starts, ends, strict=True))))
        if scanner.inside_quotes and at_end_of_object and records:
            last = records[-1]
            records[-1] = Record(last.offset, last.end, None, MALFORMED_ROW)
    return ChunkRecords(records=records, data=data, base=base)


def _record_spans(data: bytes, base: int, newlines: np.ndarray) -> tuple[list[int], list[int]]:
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
    return starts[keep].tolist(), ends[keep].tolist()


def _parse_whole(data: bytes, starts: list[int], ends: list[int]) -> list[Record] | None:
    """One decode and one `csv` pass over the whole chunk, or None when the careful path
    must decide (invalid UTF-8, a NUL, a bare CR, a field over the csv size limit, or any
    disagreement with the scanner about where records end)."""
    if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
        return None  # a bare CR ends a line for csv but not for the scanner
    if b"\x00" in data:
        return None  # its record is an encoding_error, decided record by record
    try:
        text = data.decode("utf-8")
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    except (UnicodeDecodeError, csv.Error):
        return None
    if len(rows) != len(starts):
        return None
    return list(map(Record, starts, ends, rows))


def _parse(data: bytes, base: int, spans: list[tuple[int, int]]) -> Iterator[Record]:
    texts: list[str | None] = []
    for start, end in spans:
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
    for (start, end), text in zip(spans, texts, strict=True):
        if text is None:
            yield Record(start, end, None, ENCODING_ERROR)
            continue
        consumed += 1
        try:
            fields = next(reader)
        except csv.Error:
            yield Record(start, end, None, MALFORMED_ROW)
            continue
        if reader.line_num != consumed:
            # The scanner and the csv module disagreed on where a record ends. They share
            # one definition, so this is a bug; failing loudly beats misattributing rows.
            raise RuntimeError(f"record split out of step with csv at byte {start}")
        yield Record(start, end, fields)
