"""The item embedder: `hashing` (offline, lexical, the default) or `openai` (any
OpenAI-compatible `/v1/embeddings` endpoint), chosen by `CATALOG_EMBEDDER`."""

from __future__ import annotations

import dagster as dg

from catalog_pipeline.core.embedding.base import Embedder, EmbedderError
from catalog_pipeline.core.embedding.hashing import DEFAULT_DIMENSION, HashingEmbedder
from catalog_pipeline.settings import EMBEDDER

KINDS = ("hashing", "openai")
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_OPENAI_MODEL = "text-embedding-3-small"


class EmbedderResource(dg.ConfigurableResource):
    """Which embedder turns items into vectors, and how the `openai` one calls its endpoint
    (`dimensions`: the vector length asked of the model, or of the hashing embedder)."""

    kind: str = "hashing"
    dimensions: int = DEFAULT_DIMENSION
    openai_base_url: str = DEFAULT_OPENAI_URL
    openai_model: str = DEFAULT_OPENAI_MODEL
    openai_api_key: str | None = None
    batch_size: int = 64  # texts per embeddings request
    timeout_seconds: int = 30

    def build(self) -> Embedder:
        kind = self.kind.strip().lower()
        if kind == "hashing":
            return HashingEmbedder(self.dimensions)
        if kind == "openai":
            from catalog_pipeline.core.embedding.openai import OpenAIEmbedder

            return OpenAIEmbedder(
                base_url=self.openai_base_url,
                api_key=self.openai_api_key,
                model=self.openai_model,
                dimensions=self.dimensions,
                batch_size=self.batch_size,
                timeout_seconds=self.timeout_seconds,
            )
        raise EmbedderError(f"{EMBEDDER}={self.kind!r}: expected one of {', '.join(KINDS)}")
