"""Turn one planned byte range into records with their byte offsets.

A chunk starts on a record boundary, so the scan starts outside quotes. Each record is
decoded on its own: an undecodable record becomes an `encoding_error` record instead of
failing the chunk, and its neighbours are unaffected.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass

from catalog_pipeline.core.records import RecordScanner, is_blank_record

MALFORMED_ROW = "malformed_row"
ENCODING_ERROR = "encoding_error"
RAW_LOG_BYTES = 4096


@dataclass(frozen=True, slots=True)
class Record:
    """One logical CSV record: fields, or the reason it could not be parsed.

    `offset` and `end` are absolute byte offsets in the object (end excludes the line end).
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
    ends = scanner.feed(data, base).tolist()
    spans: list[tuple[int, int]] = []
    start = base
    for end in ends:
        if not is_blank_record(data, start - base, end - base):
            spans.append((start, end))
        start = end + 1
    tail_end = base + len(data)
    unterminated = False
    if start < tail_end and not is_blank_record(data, start - base, tail_end - base):
        spans.append((start, tail_end))
        unterminated = scanner.inside_quotes and at_end_of_object
    records = list(_parse(data, base, spans))
    if unterminated:
        last = records[-1]
        records[-1] = Record(last.offset, last.end, None, MALFORMED_ROW)
    return ChunkRecords(records=records, data=data, base=base)


def _parse(data: bytes, base: int, spans: list[tuple[int, int]]) -> Iterator[Record]:
    texts: list[str | None] = []
    for start, end in spans:
        stop = end - base
        if stop > start - base and data[stop - 1] == 0x0D:
            stop -= 1
        try:
            texts.append(data[start - base : stop].decode("utf-8"))
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
