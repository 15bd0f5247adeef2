"""A valid item ready to be stored: its record offset and its content hash."""

from __future__ import annotations

import json
import re
from datetime import datetime
from hashlib import blake2b
from typing import NamedTuple

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
            image_urls_json(item.image_urls),
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
