"""A valid item ready to be stored: its record offset and its content hash."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from catalog_pipeline.core.validation import Item

_HASHED = ("name", "brand", "category", "description")


def content_hash(item: Item) -> str:
    """Hash of what describes the item (name, brand, category, description).

    Classification inputs: a change here makes the item eligible for reclassification;
    a price or play-count change does not.
    """
    payload = "\x1f".join(getattr(item, name) or "" for name in _HASHED)
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class StagedItem:
    """A valid item and the byte offset of the record it came from."""

    item: Item
    offset: int

    @property
    def sku(self) -> str:
        return self.item.sku

    def as_row(
        self, source: str, observed_at: datetime, object_key: str, source_file_id: int
    ) -> tuple:
        """The row in `catalog_pipeline.db.ingest.ITEM_COLUMNS` order."""
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
            json.dumps(list(item.image_urls)) if item.image_urls else None,
            item.availability,
            item.weight_grams,
            item.play_count,
            item.external_id,
            source,
            observed_at,
            object_key,
            source_file_id,
            self.offset,
            content_hash(item),
        )
