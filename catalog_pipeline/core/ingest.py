"""Validate the records of one chunk: the pure part of `process_chunk`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from catalog_pipeline.core.columnar import accept_rows
from catalog_pipeline.core.items import (
    StagedItem,
    items_table,
    latest_per_sku,
    with_content_hash,
)
from catalog_pipeline.core.reader import (
    ChunkRecords,
    ColumnarChunk,
    Record,
    raw_log_bytes,
    read_chunk_columns,
)
from catalog_pipeline.core.records import DEFAULT_QUOTE_BOUNDS, QuoteBounds
from catalog_pipeline.core.validation import (
    MAX_SKU_LENGTH,
    HeaderMapping,
    attributes_json,
    validate_record,
)


@dataclass(frozen=True, slots=True)
class InvalidRecord:
    byte_offset: int
    reasons: tuple[str, ...]
    raw: bytes
    # The record's SKU when it has one (the right field count, a non-empty SKU field):
    # a full-snapshot source still lists an item whose row is invalid today.
    sku: str | None = None


@dataclass(frozen=True, slots=True)
class ChunkOutcome:
    """What one chunk stores: its items (one row per SKU, the SKU's last record, in SKU
    order, with content hashes; `STAGE_SCHEMA` + `content_hash`), its invalid records in
    object order, and counts for metadata."""

    items: pa.Table
    invalid: list[InvalidRecord]
    valid_rows: int  # valid records, a SKU repeated in the chunk counted each time
    reasons: Counter = field(default_factory=Counter)

    @property
    def rows(self) -> int:
        return self.valid_rows + len(self.invalid)


def process_chunk_bytes(
    data: bytes, base: int, mapping: HeaderMapping, quote_bounds: QuoteBounds = DEFAULT_QUOTE_BOUNDS
) -> ChunkOutcome:
    """Read and validate `data` (a planned range starting at object offset `base`).

    Rows Arrow reads are first checked as whole columns (`core.columnar`); the rows that
    check declines, and every row of a chunk Arrow cannot read, go through
    `validate_record` one by one. Both give the same items.
    """
    chunk = read_chunk_columns(data, base, mapping.field_count, quote_bounds)
    tables: list[pa.Table] = []
    accepted = np.empty(0, dtype=bool)
    if isinstance(chunk, ColumnarChunk):
        # Every row stays in the table until the one copy in `latest_per_sku`; the mask
        # says which of them hold valid values.
        accepted, values = accept_rows(chunk.table, mapping)
        values = values.append_column("source_offset", pa.array(chunk.starts))
        tables.append(values.append_column("attributes", _attributes(chunk.table, mapping)))
        records = chunk.records(~accepted)
    else:
        records = chunk.records
    items, invalid, reasons = _validate_each(records, chunk, mapping)
    tables.append(items_table(items))
    valid = np.concatenate([accepted, np.ones(len(items), dtype=bool)])
    return ChunkOutcome(
        items=with_content_hash(latest_per_sku(pa.concat_tables(tables), valid)),
        invalid=invalid,
        valid_rows=int(valid.sum()),
        reasons=reasons,
    )


def _validate_each(
    records: list[Record], chunk: ColumnarChunk | ChunkRecords, mapping: HeaderMapping
) -> tuple[list[StagedItem], list[InvalidRecord], Counter]:
    items: list[StagedItem] = []
    invalid: list[InvalidRecord] = []
    reasons: Counter = Counter()
    for record in records:
        sku = None
        if record.error is not None:
            found: tuple[str, ...] = (record.error,)
        else:
            item, found = validate_record(record.fields, mapping)
            if item is not None:
                extras = attributes_json(record.fields, mapping.extras) if mapping.extras else None
                items.append(StagedItem(item, record.offset, extras))
                continue
            if len(record.fields) == mapping.field_count:
                sku = record.fields[mapping.positions["sku"]].strip()[:MAX_SKU_LENGTH] or None
        reasons.update(found)
        invalid.append(
            InvalidRecord(record.offset, found, chunk.raw(record, raw_log_bytes(record)), sku)
        )
    return items, invalid, reasons


def _attributes(table: pa.Table, mapping: HeaderMapping) -> pa.Array:
    """The `attributes` of every row of a columnar chunk: null for all when the file has
    no columns outside the contract (the common case costs nothing), else each row's JSON
    (a Python pass over the extra columns only)."""
    if not mapping.extras:
        return pa.nulls(table.num_rows, pa.string())
    columns = [table.column(index).to_pylist() for _, index in mapping.extras]
    local = [(name, position) for position, (name, _) in enumerate(mapping.extras)]
    return pa.array(
        [attributes_json(row, local) for row in zip(*columns, strict=True)], pa.string()
    )
