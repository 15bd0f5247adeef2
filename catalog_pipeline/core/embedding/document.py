"""What of an item is embedded: a short document built from its name, brand, category and
description, and the hash that says whether it changed since the last embedding."""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass

DOCUMENT_VERSION = 1  # bump when the text below changes: every item is embedded again
DESCRIPTION_CHARS = 2000  # what a search needs of a description; long ones cost tokens


@dataclass(frozen=True, slots=True)
class ItemDocument:
    """The embedded fields of one catalog item (`content_hash`: the item's, at read time)."""

    item_id: int
    sku: str
    name: str
    brand: str | None = None
    category: str | None = None
    description: str | None = None
    content_hash: str = ""

    def text(self) -> str:
        """The embedding input: the name, then `brand: …`, `category: …` and the start of
        the description, a line each (empty fields left out)."""
        lines = [self.name.strip()]
        if self.brand and self.brand.strip():
            lines.append(f"brand: {self.brand.strip()}")
        if self.category and self.category.strip():
            lines.append(f"category: {self.category.strip()}")
        if self.description and self.description.strip():
            lines.append(self.description.strip()[:DESCRIPTION_CHARS])
        return "\n".join(lines)


def input_hash(embedder_key: str, text: str) -> str:
    """The hash kept beside a vector: of the embedder's key, the document version and the
    text (NFC-normalised), so another model, dimension or text embeds again."""
    normalized = unicodedata.normalize("NFC", text)
    payload = f"{embedder_key}\x00{DOCUMENT_VERSION}\x00{normalized}".encode()
    return hashlib.sha256(payload).hexdigest()[:32]
