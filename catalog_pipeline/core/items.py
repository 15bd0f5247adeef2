"""Valid items ready to be stored: record offsets, content hashes, one row per SKU."""

from __future__ import annotations

import json
import re
from hashlib import blake2b
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog_pipeline.core.columnar import STAGE_SCHEMA, contiguous, value_offsets
from catalog_pipeline.core.validation import Item

# JSON strings that need no escaping: printable ASCII without quotes or backslashes.
_PLAIN_JSON = re.compile(r"[ !#-\[\]-~]*")


def content_hash(item: Item) -> str:
    """Hash of what describes the item (name, brand, category, description).

    Classification inputs: a change here makes the item eligible for reclassification;
    a price or play-count change does not.
    """
    payload = (
        f"{item.name}\x1f{item.brand or ''}\x1f{item.category or ''}\x1f{item.description or ''}"
    )
    return blake2b(payload.encode("utf-8"), digest_size=16).hexdigest()


def image_urls_json(urls: tuple[str, ...]) -> str | None:
    """The stored JSON list of image URLs (`json.dumps` output), None for no images."""
    if not urls:
        return None
    if _PLAIN_JSON.fullmatch("".join(urls)):
        return '["' + '", "'.join(urls) + '"]'
    return json.dumps(list(urls))


class StagedItem(NamedTuple):
    """A valid item and the byte offset of the record it came from (one per valid row,
    so a named tuple rather than a dataclass)."""

    item: Item
    offset: int
    attributes: str | None = None  # `validation.attributes_json` of the record

    def as_row(self) -> tuple:
        """The row in `STAGE_SCHEMA` order (without the content hash)."""
        item = self.item
        return (
            item.sku,
            item.name,
            item.brand,
            item.category,
            item.description,
            item.price,
            item.currency,
            item.url,
            image_urls_json(item.image_urls),
            item.availability,
            item.weight_grams,
            item.play_count,
            item.external_id,
            self.offset,
            self.attributes,
        )


def items_table(items: list[StagedItem]) -> pa.Table:
    """Items validated row by row, as a table in `STAGE_SCHEMA`."""
    columns = zip(*(item.as_row() for item in items), strict=True) if items else []
    arrays = list(columns) or [[] for _ in STAGE_SCHEMA]
    return pa.Table.from_arrays(
        [pa.array(values, field.type) for values, field in zip(arrays, STAGE_SCHEMA, strict=True)],
        schema=STAGE_SCHEMA,
    )


def latest_per_sku(table: pa.Table, candidates: np.ndarray | None = None) -> pa.Table:
    """One row per SKU, its last record in the chunk (as precedence would choose), in SKU
    order (the lock order of the upsert; byte order of UTF-8 is code point order).

    Only rows where `candidates` is True take part (default: all). The order is worked
    out on the SKU and offset columns alone; the table is copied once, by one `take`.
    """
    rows = np.flatnonzero(candidates) if candidates is not None else np.arange(table.num_rows)
    keys = pa.table(
        {
            "sku": table.column("sku").take(rows),
            "offset": table.column("source_offset").take(rows),
        }
    )
    order = pc.sort_indices(keys, [("sku", "ascending"), ("offset", "descending")]).to_numpy()
    skus = contiguous(keys.column("sku").take(order))
    first = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        first[1:] = pc.not_equal(skus[1:], skus[:-1]).to_numpy(zero_copy_only=False)
    return table.take(rows[order[first]])


def with_content_hash(table: pa.Table, rows_per_piece: int = 8192) -> pa.Table:
    """`table` plus a `content_hash` column: `content_hash` of each row's item, hashed
    from joined Arrow columns instead of a Python string per row (`rows_per_piece` rows
    joined at a time, so the pieces reuse one another's memory)."""
    hashes: list[str] = []
    for start in range(0, table.num_rows, rows_per_piece):
        piece = table.slice(start, rows_per_piece)
        text = [pc.fill_null(piece.column(name), "") for name in _HASHED]
        payload = contiguous(pc.binary_join_element_wise(*text, "\x1f"))
        offsets = value_offsets(payload).tolist()
        data = memoryview(payload.buffers()[2] or b"")
        hashes.extend(
            blake2b(data[begin:end], digest_size=16).hexdigest()
            for begin, end in zip(offsets[:-1], offsets[1:], strict=True)
        )
    return table.append_column("content_hash", pa.array(hashes, pa.string()))


_HASHED = ("name", "brand", "category", "description")
