"""Resources: the bucket of scraper CSVs and the catalog database."""

from __future__ import annotations

import os
import threading

import dagster as dg
from sqlalchemy import Engine

from catalog_pipeline.core.bucket import DEFAULT_BUCKET_URL, Bucket, S3Bucket, open_bucket
from catalog_pipeline.core.chunking import DEFAULT_CHUNK_BYTES
from catalog_pipeline.core.embedding.hashing import DEFAULT_DIMENSION
from catalog_pipeline.core.openai_classifier import DEFAULT_BASE_URL as DEFAULT_CLASSIFIER_URL
from catalog_pipeline.core.openai_classifier import DEFAULT_MODEL as DEFAULT_CLASSIFIER_MODEL
from catalog_pipeline.core.records import (
    DEFAULT_MAX_QUOTED_BYTES,
    DEFAULT_MAX_QUOTED_LINE_FEEDS,
    QuoteBounds,
)
from catalog_pipeline.core.retry import retrying
from catalog_pipeline.core.snapshots import DEFAULT_HOLD_PERCENT, SnapshotPolicy
from catalog_pipeline.db.engine import ensure_current, make_engine
from catalog_pipeline.resources.classifier import ClassifierResource
from catalog_pipeline.resources.embedder import (
    DEFAULT_OPENAI_MODEL,
    DEFAULT_OPENAI_URL,
    EmbedderResource,
)
from catalog_pipeline.settings import (
    BUCKET_URL,
    CHUNK_BYTES,
    CLASSIFIER,
    CLASSIFIER_BATCH_SIZE,
    CLASSIFIER_MAX_RETRIES,
    CLASSIFIER_OPENAI_API_KEY,
    CLASSIFIER_OPENAI_BASE_URL,
    CLASSIFIER_OPENAI_MODEL,
    CLASSIFIER_TIMEOUT_SECONDS,
    DATABASE_URL,
    DELIST_HOLD_PERCENT,
    EMBEDDER,
    EMBEDDINGS_API_KEY,
    EMBEDDINGS_BATCH_SIZE,
    EMBEDDINGS_DIMENSIONS,
    EMBEDDINGS_MODEL,
    EMBEDDINGS_URL,
    FULL_SNAPSHOT_SOURCES,
    MAX_QUOTED_BYTES,
    MAX_QUOTED_LINE_FEEDS,
    S3_ENDPOINT_URL,
)

_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


class BucketResource(dg.ConfigurableResource):
    """The object store the scrapers write to: `file://FOLDER` or `s3://BUCKET/PREFIX` (R2)."""

    url: str = DEFAULT_BUCKET_URL
    endpoint_url: str | None = None

    def open(self) -> Bucket:
        if self.url.startswith("s3://"):
            from dagster_aws.s3 import S3Resource

            # One attempt per call (botocore's `max_attempts` counts retries): our retry
            # layer (core.retry) decides how long to retry, with its budget; boto3's own
            # retries inside it would multiply the waits.
            client = S3Resource(endpoint_url=self.endpoint_url, max_attempts=0).get_client()
            bucket = open_bucket(self.url, client=client)
            assert isinstance(bucket, S3Bucket)
            return bucket
        return open_bucket(self.url)


class CatalogDatabase(dg.ConfigurableResource):
    """The catalog database; migrations are applied on first use in each process."""

    url: str | None = None

    def engine(self) -> Engine:
        key = self.url or ""
        with _ENGINES_LOCK:
            engine = _ENGINES.get(key)
            if engine is None:
                engine = make_engine(self.url)
                retrying(lambda: ensure_current(engine), "catalog database: schema check")
                _ENGINES[key] = engine
            return engine


class IngestSettings(dg.ConfigurableResource):
    """How objects are split: the target chunk size in bytes, and how far a quoted field
    may run past a line feed before its opening quote counts as unclosed."""

    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    max_quoted_bytes: int = DEFAULT_MAX_QUOTED_BYTES
    max_quoted_line_feeds: int = DEFAULT_MAX_QUOTED_LINE_FEEDS
    # Sources whose every file lists their whole catalog (comma-separated, `*` for all):
    # an item missing from a newer completed file is delisted, unless more than
    # `delist_hold_percent` % of the source's listed items would go at once.
    full_snapshot_sources: str = ""
    delist_hold_percent: int = DEFAULT_HOLD_PERCENT

    def quote_bounds(self) -> QuoteBounds:
        return QuoteBounds(self.max_quoted_bytes, self.max_quoted_line_feeds)

    def snapshot_policy(self) -> SnapshotPolicy:
        return SnapshotPolicy.parse(self.full_snapshot_sources, self.delist_hold_percent / 100)


def _env_or(name: str, default, kind=dg.EnvVar):
    """An `EnvVar` when the variable is set (so its value is never shown), else the default."""
    return kind(name) if os.environ.get(name) else default


def default_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "bucket": BucketResource(
            url=_env_or(BUCKET_URL, DEFAULT_BUCKET_URL),
            endpoint_url=_env_or(S3_ENDPOINT_URL, None),
        ),
        "catalog_db": CatalogDatabase(url=_env_or(DATABASE_URL, None)),
        "ingest_settings": IngestSettings(
            chunk_bytes=_env_or(CHUNK_BYTES, DEFAULT_CHUNK_BYTES, dg.EnvVar.int),
            max_quoted_bytes=_env_or(MAX_QUOTED_BYTES, DEFAULT_MAX_QUOTED_BYTES, dg.EnvVar.int),
            max_quoted_line_feeds=_env_or(
                MAX_QUOTED_LINE_FEEDS, DEFAULT_MAX_QUOTED_LINE_FEEDS, dg.EnvVar.int
            ),
            full_snapshot_sources=_env_or(FULL_SNAPSHOT_SOURCES, ""),
            delist_hold_percent=_env_or(DELIST_HOLD_PERCENT, DEFAULT_HOLD_PERCENT, dg.EnvVar.int),
        ),
        "classifier": ClassifierResource(
            kind=_env_or(CLASSIFIER, "keyword"),
            openai_base_url=_env_or(CLASSIFIER_OPENAI_BASE_URL, DEFAULT_CLASSIFIER_URL),
            openai_model=_env_or(CLASSIFIER_OPENAI_MODEL, DEFAULT_CLASSIFIER_MODEL),
            openai_api_key=_env_or(CLASSIFIER_OPENAI_API_KEY, None),
            batch_size=_env_or(CLASSIFIER_BATCH_SIZE, 20, dg.EnvVar.int),
            timeout_seconds=_env_or(CLASSIFIER_TIMEOUT_SECONDS, 30, dg.EnvVar.int),
            max_retries=_env_or(CLASSIFIER_MAX_RETRIES, 4, dg.EnvVar.int),
        ),
        "embedder": default_embedder(),
    }


def default_embedder() -> EmbedderResource:
    return EmbedderResource(
        kind=_env_or(EMBEDDER, "hashing"),
        dimensions=_env_or(EMBEDDINGS_DIMENSIONS, DEFAULT_DIMENSION, dg.EnvVar.int),
        openai_base_url=_env_or(EMBEDDINGS_URL, DEFAULT_OPENAI_URL),
        openai_model=_env_or(EMBEDDINGS_MODEL, DEFAULT_OPENAI_MODEL),
        openai_api_key=_env_or(EMBEDDINGS_API_KEY, None),
        batch_size=_env_or(EMBEDDINGS_BATCH_SIZE, 64, dg.EnvVar.int),
    )
