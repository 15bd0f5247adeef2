"""Settings from the environment, with embedded defaults that need nothing installed."""

from __future__ import annotations

import os

from catalog_pipeline.core.bucket import DEFAULT_BUCKET_URL
from catalog_pipeline.core.chunking import DEFAULT_CHUNK_BYTES

BUCKET_URL = "CATALOG_BUCKET_URL"
S3_ENDPOINT_URL = "CATALOG_S3_ENDPOINT_URL"
DATABASE_URL = "CATALOG_DATABASE_URL"
CHUNK_BYTES = "CATALOG_CHUNK_BYTES"

DEFAULTS = {BUCKET_URL: DEFAULT_BUCKET_URL, CHUNK_BYTES: str(DEFAULT_CHUNK_BYTES)}


def setting(name: str) -> str | None:
    """The environment's value, else the embedded default (None when there is none)."""
    return os.environ.get(name) or DEFAULTS.get(name)
