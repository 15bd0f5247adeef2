"""The default embedder: lexical feature hashing, offline and deterministic.

It is **lexical, not semantic**: it finds items that share words and word fragments with
the query (an exact or near-exact name first, a misspelt one usually), not items that
mean the same in other words ("rucksack" does not find "backpack"). For meaning, use an
embedding model (`openai`, any OpenAI-compatible endpoint).

Each field of an item becomes a sparse vector of hashed features (words, pairs of
adjacent words, and for the name, the 3-character pieces of each word, so a typo still
shares most of them); each feature adds its weight, with a sign from the hash, at its
hashed position (the "hashing trick": no vocabulary to learn or store). The field vectors
are scaled to unit length and added with the field's weight (the name counts most), then
the sum is scaled to unit length, so cosine similarity is a dot product. A query is read
like a name.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Sequence

import numpy as np

from catalog_pipeline.core.embedding.base import EmbeddedBatch, EmbedderError, unit_rows
from catalog_pipeline.core.embedding.document import ItemDocument

NAME = "hashing-v1"
DEFAULT_DIMENSION = 256
_WORD = re.compile(r"\w+")
# Field weights: the name says what the item is; the rest tells apart items of one name.
_NAME_WEIGHT, _BRAND_WEIGHT, _CATEGORY_WEIGHT, _DESCRIPTION_WEIGHT = 1.0, 0.35, 0.25, 0.35
_PAIR_WEIGHT, _PIECE_WEIGHT = 0.7, 0.35


class HashingEmbedder:
    """Feature hashing of words, word pairs and name fragments into `dimension` floats."""

    batch_size = 512

    def __init__(self, dimension: int = DEFAULT_DIMENSION) -> None:
        if not 16 <= dimension <= 4096:
            raise EmbedderError(f"hashing embedder dimension {dimension}: use 16 to 4096")
        self.dimension = dimension
        self.key = f"{NAME}@{dimension}"

    def embed_documents(self, documents: Sequence[ItemDocument]) -> EmbeddedBatch:
        vectors = np.zeros((len(documents), self.dimension), dtype=np.float32)
        for row, document in enumerate(documents):
            vectors[row] = self._document(document)
        return EmbeddedBatch(unit_rows(vectors), tuple(range(len(documents))))

    def embed_query(self, text: str) -> np.ndarray:
        return unit_rows(self._field(text, pieces=True)[None, :])[0]

    def _document(self, document: ItemDocument) -> np.ndarray:
        total = _NAME_WEIGHT * self._field(document.name, pieces=True)
        for text, weight in (
            (document.brand, _BRAND_WEIGHT),
            (document.category, _CATEGORY_WEIGHT),
            (document.description, _DESCRIPTION_WEIGHT),
        ):
            if text:
                total += weight * self._field(text, pieces=False)
        return total

    def _field(self, text: str, pieces: bool) -> np.ndarray:
        """One field's unit vector of hashed features."""
        vector = np.zeros(self.dimension, dtype=np.float32)
        words = _WORD.findall(unicodedata.normalize("NFKC", text).casefold())
        if not words:
            return vector
        features: list[tuple[str, float]] = [(word, 1.0) for word in words]
        features += [(f"{a} {b}", _PAIR_WEIGHT) for a, b in zip(words, words[1:], strict=False)]
        if pieces:
            for word in words:
                padded = f"<{word}>"
                features += [
                    (f"#{padded[i : i + 3]}", _PIECE_WEIGHT) for i in range(len(padded) - 2)
                ]
        for feature, weight in features:
            hashed = zlib.crc32(feature.encode())
            vector[hashed % self.dimension] += weight if hashed & 0x80000000 else -weight
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm else vector
