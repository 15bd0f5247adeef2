"""Settings from the environment, with embedded defaults that need nothing installed."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from catalog_pipeline.core.bucket import DEFAULT_BUCKET_URL
from catalog_pipeline.core.chunking import DEFAULT_CHUNK_BYTES

BUCKET_URL = "CATALOG_BUCKET_URL"
S3_ENDPOINT_URL = "CATALOG_S3_ENDPOINT_URL"
DATABASE_URL = "CATALOG_DATABASE_URL"
CHUNK_BYTES = "CATALOG_CHUNK_BYTES"
# When an opening quote counts as unclosed (see core.records): bytes and line feeds.
MAX_QUOTED_BYTES = "CATALOG_MAX_QUOTED_BYTES"
MAX_QUOTED_LINE_FEEDS = "CATALOG_MAX_QUOTED_LINE_FEEDS"
# Full-snapshot sources (comma-separated names, `*` for all): an item missing from a newer
# completed file is delisted, unless more than this percentage of the source would go at once.
FULL_SNAPSHOT_SOURCES = "CATALOG_FULL_SNAPSHOT_SOURCES"
DELIST_HOLD_PERCENT = "CATALOG_DELIST_HOLD_PERCENT"
# Classification: `keyword` (offline, default) or `openai` (any OpenAI-compatible endpoint).
CLASSIFIER = "CLASSIFIER"
CLASSIFIER_OPENAI_BASE_URL = "CLASSIFIER_OPENAI_BASE_URL"
CLASSIFIER_OPENAI_MODEL = "CLASSIFIER_OPENAI_MODEL"
CLASSIFIER_OPENAI_API_KEY = "CLASSIFIER_OPENAI_API_KEY"  # a secret: only ever read via EnvVar
CLASSIFIER_BATCH_SIZE = "CLASSIFIER_BATCH_SIZE"
CLASSIFIER_TIMEOUT_SECONDS = "CLASSIFIER_TIMEOUT_SECONDS"
CLASSIFIER_MAX_RETRIES = "CLASSIFIER_MAX_RETRIES"
# Embeddings: `hashing` (offline, lexical, default) or `openai` (an OpenAI-compatible endpoint).
EMBEDDER = "CATALOG_EMBEDDER"
EMBEDDINGS_URL = "CATALOG_EMBEDDINGS_URL"
EMBEDDINGS_MODEL = "CATALOG_EMBEDDINGS_MODEL"
EMBEDDINGS_API_KEY = "CATALOG_EMBEDDINGS_API_KEY"  # a secret: only ever read via EnvVar
EMBEDDINGS_DIMENSIONS = "CATALOG_EMBEDDINGS_DIMENSIONS"
EMBEDDINGS_BATCH_SIZE = "CATALOG_EMBEDDINGS_BATCH_SIZE"
# The stats provider of the playcount backfill; without a URL the provider drain is skipped.
PLAYCOUNT_API_URL = "PLAYCOUNT_API_URL"
PLAYCOUNT_API_KEY = "PLAYCOUNT_API_KEY"  # a secret: only ever read via EnvVar
PLAYCOUNT_DAILY_QUOTA = "PLAYCOUNT_DAILY_QUOTA"
PLAYCOUNT_TIMEOUT_SECONDS = "PLAYCOUNT_TIMEOUT_SECONDS"
# new_csv_objects_sensor: how long a tick lists and compares; partition_retention_job: after
# how many days a settled object's `source_csvs` partition goes (0: never).
SENSOR_LIST_BUDGET_SECONDS = "CATALOG_SENSOR_LIST_BUDGET_SECONDS"
# new_csv_objects_sensor: how many lanes (key ranges) of the bucket it lists side by side.
SENSOR_LIST_CONCURRENCY = "CATALOG_SENSOR_LIST_CONCURRENCY"
PARTITION_RETENTION_DAYS = "CATALOG_PARTITION_RETENTION_DAYS"

N = TypeVar("N", int, float)

DEFAULTS = {BUCKET_URL: DEFAULT_BUCKET_URL, CHUNK_BYTES: str(DEFAULT_CHUNK_BYTES)}


def setting(name: str) -> str | None:
    """The environment's value, else the embedded default (None when there is none)."""
    return os.environ.get(name) or DEFAULTS.get(name)


def number_setting(
    name: str,
    default: N,
    kind: Callable[[str], N],
    expected: str,
    rule: tuple[Callable[[N], bool], str],
    error: type[Exception] = ValueError,
) -> N:
    """A numeric setting: `default` when unset, else the value as `kind` parses it.

    A value `kind` cannot parse is an `error` saying `expected` ("give a number of
    seconds"); one that breaks `rule` (a test, and what it requires: "the budget must be
    positive") is an `error` saying that. Both name the setting and quote its value."""
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise error(f"{name}={raw!r}: {expected}") from None
    valid, requirement = rule
    if not valid(value):
        raise error(f"{name}={raw!r}: {requirement}")
    return value
