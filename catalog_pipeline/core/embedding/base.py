"""The `Embedder` interface, its errors and its batch result."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from catalog_pipeline.core.embedding.document import ItemDocument
from catalog_pipeline.core.errors import CatalogError

# An embedder key names a model inside SQL (the per-model vector index): keep it plain.
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._:/+-]{0,99}$")


class EmbedderError(CatalogError):
    """An embedder cannot work at all (bad configuration, endpoint down after its retries):
    the run fails and no item is blamed."""


@dataclass(frozen=True, slots=True)
class EmbeddedBatch:
    """Unit vectors (float32, one row per document, in order) for the documents that were
    embedded, and a reason for each that failed on its own (by position in the batch)."""

    vectors: np.ndarray
    embedded: tuple[int, ...]  # positions in the batch, in order, one per row of `vectors`
    failures: dict[int, str] = field(default_factory=dict)


class Embedder(Protocol):
    key: str  # `name@dimension`: stored with every vector
    dimension: int
    batch_size: int

    def embed_documents(self, documents: Sequence[ItemDocument]) -> EmbeddedBatch:
        """Embed a batch; raise `EmbedderError` when the embedder cannot work at all."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """The unit vector of a search text."""
        ...


def checked_key(key: str) -> str:
    if not _KEY.match(key):
        raise EmbedderError(
            f"embedder key {key!r}: use letters, digits and @._:/+- (at most 100 characters)"
        )
    return key


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero), as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
