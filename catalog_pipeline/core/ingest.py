"""Validate the records of one chunk: the pure part of `process_chunk`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from catalog_pipeline.core.items import StagedItem
from catalog_pipeline.core.reader import RAW_LOG_BYTES, read_chunk
from catalog_pipeline.core.validation import HeaderMapping, validate_record


@dataclass(frozen=True, slots=True)
class InvalidRecord:
    byte_offset: int
    reasons: tuple[str, ...]
    raw: bytes


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """Valid items and invalid records of one chunk, with reason counts for metadata."""

    items: list[StagedItem]
    invalid: list[InvalidRecord]
    reasons: Counter = field(default_factory=Counter)

    @property
    def rows(self) -> int:
        return len(self.items) + len(self.invalid)


def process_chunk_bytes(
    data: bytes, base: int, mapping: HeaderMapping, at_end_of_object: bool
) -> ChunkOutcome:
    """Read and validate `data` (a planned range starting at object offset `base`)."""
    chunk = read_chunk(data, base, at_end_of_object, mapping.field_count)
    items: list[StagedItem] = []
    invalid: list[InvalidRecord] = []
    reasons: Counter = Counter()
    for record in chunk.records:
        if record.error is not None:
            found: tuple[str, ...] = (record.error,)
        else:
            item, found = validate_record(record.fields, mapping)
            if item is not None:
                items.append(StagedItem(item, record.offset))
                continue
        reasons.update(found)
        invalid.append(InvalidRecord(record.offset, found, chunk.raw(record, RAW_LOG_BYTES)))
    return ChunkOutcome(items=items, invalid=invalid, reasons=reasons)
