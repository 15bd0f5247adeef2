"""The catalog schema, the same on SQLite and Postgres. Migrations are generated from this."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    REAL,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(TypeDecorator):
    """Timestamps are always UTC: aware in Python, timestamptz on Postgres, ISO text on SQLite.

    SQLite compares timestamps as text, so every value is stored normalised to UTC in one
    format; that keeps the precedence comparison of `catalog_items` correct on both.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _timestamps() -> list[Column]:
    return [
        Column("created_at", UtcDateTime, nullable=False, default=utcnow),
        Column("updated_at", UtcDateTime, nullable=False, default=utcnow, onupdate=utcnow),
    ]


# JSON, stored as JSONB on PostgreSQL (indexable, compact) and as text on SQLite.
JSON_DOCUMENT = JSON().with_variant(JSONB(), "postgresql")

FILE_STATUSES = ("planned", "ingesting", "completed", "failed", "rejected", "superseded")

source_files = Table(
    "source_files",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("object_key", Text, nullable=False),
    Column("etag", String(200), nullable=False),
    Column("source", Text, nullable=False),
    Column("observed_at", UtcDateTime, nullable=False),
    Column("last_modified", UtcDateTime),
    Column("size", BigInteger, nullable=False),
    Column("status", String(20), nullable=False),
    Column("rejected_reason", Text),
    Column("error", Text),
    Column("header", Text),
    Column("data_start", BigInteger),
    Column("chunk_bytes", BigInteger),
    Column("chunk_count", Integer),
    Column("has_bom", Boolean),
    Column("rows_total", BigInteger),
    Column("rows_valid", BigInteger),
    Column("rows_invalid", BigInteger),
    Column("verified_row_count", BigInteger),
    Column("verified_at", UtcDateTime),
    Column("superseded_by", Integer, ForeignKey("source_files.id")),
    Column("run_id", String(64)),
    # A `failed` file: the chunk indexes that did not complete (JSON list; migration 0005).
    # Its reason is in `error`.
    Column("failed_chunks", Text),
    # A completed file of a full-snapshot source (migration 0007): how many items it
    # delisted, or why delisting was held (too large a share of the source at once).
    Column("delisted_items", BigInteger),
    Column("delisting_held", Text),
    *_timestamps(),
    UniqueConstraint("object_key", "etag"),
    Index(None, "status"),
    Index(None, "source"),
)

source_chunks = Table(
    "source_chunks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("source_file_id", Integer, ForeignKey("source_files.id"), nullable=False),
    Column("chunk_index", Integer, nullable=False),
    Column("byte_start", BigInteger, nullable=False),
    Column("byte_end", BigInteger, nullable=False),
    Column("status", String(20), nullable=False),
    Column("rows", BigInteger),
    Column("valid", BigInteger),
    Column("invalid", BigInteger),
    Column("attempts", Integer, nullable=False, default=0),
    Column("run_id", String(64)),
    Column("error", Text),
    Column("seconds", Float),
    *_timestamps(),
    UniqueConstraint("source_file_id", "chunk_index"),
)

catalog_items = Table(
    "catalog_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sku", String(200), nullable=False, unique=True),
    Column("name", Text, nullable=False),
    Column("brand", Text),
    Column("category", Text),
    Column("description", Text),
    Column("price", Float),
    Column("currency", Text),
    Column("url", Text, nullable=False),
    Column("image_urls", Text),
    Column("availability", Text),
    Column("weight_grams", Float),
    Column("play_count", BigInteger),
    Column("external_id", Text),
    Column("source", Text, nullable=False),
    Column("observed_at", UtcDateTime, nullable=False),
    Column("object_key", Text, nullable=False),
    Column("source_file_id", Integer, nullable=False),  # no FK: see migration 0003
    Column("source_offset", BigInteger, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("first_seen_at", UtcDateTime, nullable=False, default=utcnow),
    Column("updated_at", UtcDateTime, nullable=False, default=utcnow),
    # Scraper realities (migration 0007): the file's columns outside the contract, header
    # name -> value (NULL when it had none); when a full-snapshot source stopped listing
    # the item (NULL while listed); the file that last changed its price, currency,
    # availability or listing, i.e. its newest `catalog_item_history` row.
    Column("attributes", JSON_DOCUMENT),
    Column("delisted_at", UtcDateTime),
    Column("history_file_id", Integer),
    # The file whose record the item's last update replaced (NULL until an update): lets
    # the upsert write provenance and history without ON CONFLICT (migration 0010).
    Column("replaced_file_id", Integer),
    # No index on `source` or `external_id`: no query looks a value up in either, and
    # each would cost every new item an index insert (migration 0004).
)

# One row per change of an item's price, currency, availability or listing state, with
# the file (and record) it came from: the item's state from then on (migration 0007). An
# ingest that changes none of them adds nothing; the first listing is a row.
catalog_item_history = Table(
    "catalog_item_history",
    metadata,
    Column("item_id", Integer, primary_key=True, autoincrement=False),
    Column("source_file_id", Integer, primary_key=True, autoincrement=False),
    Column("observed_at", UtcDateTime, nullable=False),
    Column("price", Float),
    Column("currency", Text),
    Column("availability", Text),
    Column("listed", Boolean, nullable=False),
    Column("byte_offset", BigInteger),  # the record's; NULL for a delisting
    Column("recorded_at", UtcDateTime, nullable=False, default=utcnow),
)

catalog_item_sources = Table(
    "catalog_item_sources",
    metadata,
    # No FKs on the bulk-written tables: references hold by construction (migration 0003).
    # The natural key is the primary key (migration 0004): file first, so it also serves
    # "the items of a file", the only lookup there is.
    Column("source_file_id", Integer, primary_key=True, autoincrement=False),
    Column("item_id", Integer, primary_key=True, autoincrement=False),
    Column("byte_offset", BigInteger, nullable=False),
    Column("first_seen_at", UtcDateTime, nullable=False, default=utcnow),
)

invalid_item_logs = Table(
    "invalid_item_logs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("source_file_id", Integer, ForeignKey("source_files.id"), nullable=False),
    Column("object_key", Text, nullable=False),
    Column("chunk_index", Integer, nullable=False),
    Column("byte_offset", BigInteger, nullable=False),
    Column("reasons", Text, nullable=False),
    Column("raw", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False, default=utcnow),
    # The record's SKU when it has one (migration 0007): an item whose row is invalid in
    # a full-snapshot file is still listed by it, so it is not delisted.
    Column("sku", String(200)),
    UniqueConstraint("source_file_id", "byte_offset"),
    Index(None, "created_at"),
)

item_classifications = Table(
    "item_classifications",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("catalog_items.id"), nullable=False),
    Column("classifier", String(100), nullable=False),
    Column("category", Text, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("input_hash", String(64), nullable=False),
    Column("classified_at", UtcDateTime, nullable=False, default=utcnow),
    UniqueConstraint("item_id", "classifier"),
)

playcount_measurements = Table(
    "playcount_measurements",
    metadata,
    # The natural key is the primary key (migration 0004); no FK: see migration 0003.
    Column("item_id", Integer, primary_key=True, autoincrement=False),
    Column("origin", String(20), primary_key=True),
    Column("measured_on", Date, primary_key=True),
    Column("play_count", BigInteger, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False, default=utcnow),
)

playcount_backfill_queue = Table(
    "playcount_backfill_queue",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("catalog_items.id"), nullable=False, unique=True),
    Column("status", String(20), nullable=False, default="pending"),
    Column("outcome", String(20)),
    Column("rank_score", Float, nullable=False, default=0.0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_status", String(20)),
    Column("last_error", Text),
    Column("claimed_at", UtcDateTime),
    Column("claimed_by", String(100)),
    *_timestamps(),
    Index(None, "status", "rank_score"),
)

provider_calls = Table(
    "provider_calls",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("item_id", Integer, ForeignKey("catalog_items.id")),
    Column("external_id", Text),
    Column("called_at", UtcDateTime, nullable=False, default=utcnow),
    Column("status", String(20), nullable=False),
    Column("latency_ms", Float),
    Column("quota_units", Integer, nullable=False, default=1),
    Column("error", Text),
    # A 429's Retry-After as a moment: no drain calls the provider before it.
    Column("retry_after_until", UtcDateTime),
    Index(None, "called_at"),
)


# Every run that ended without completing its file, once (migration 0005): the reason, and
# whether the alert went out. The primary key makes the alert exactly-once per run even
# when the run-failure sensor and the CLI both see the same failure.
ingest_run_failures = Table(
    "ingest_run_failures",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("object_key", Text, nullable=False),
    Column("etag", String(200)),
    Column("source_file_id", Integer),
    Column("reason", Text, nullable=False),
    Column("failed_at", UtcDateTime, nullable=False, default=utcnow),
    Column("alerted_at", UtcDateTime),
    Index(None, "object_key"),
)

# One ingest of an object key at a time, whatever launched it (migration 0005): the run
# holding the lease, until it ends or the lease expires (a run killed without a trace).
# The process and host that took it tell a dead in-process run (`catalog-pipeline`) apart
# from a live one when Dagster does not know the run.
ingest_leases = Table(
    "ingest_leases",
    metadata,
    Column("object_key", Text, primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("acquired_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("holder_host", Text),
    Column("holder_pid", Integer),
)

# Items a deriver (classifier, embedder) failed on (migration 0005): after `attempts`
# reaches the limit the item waits until its input changes or a `--retry-failed` run.
derivation_failures = Table(
    "derivation_failures",
    metadata,
    Column("item_id", Integer, primary_key=True, autoincrement=False),
    Column("deriver", String(200), primary_key=True),
    Column("input_hash", String(64), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("first_failed_at", UtcDateTime, nullable=False),
    Column("last_failed_at", UtcDateTime, nullable=False),
)

# What `catalog-pipeline repair` did, who asked and why it was allowed (migration 0005).
repair_history = Table(
    "repair_history",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("object_key", Text, nullable=False),
    Column("source_file_id", Integer),
    Column("ingested_etag", String(200)),
    Column("current_etag", String(200)),
    Column("forced", Boolean, nullable=False),
    Column("requested_by", Text, nullable=False),
    Column("requested_at", UtcDateTime, nullable=False, default=utcnow),
    Column("outcome", Text, nullable=False),
    Column("run_id", String(64)),
    Index(None, "object_key"),
)


# A vector: `real[]` on PostgreSQL (pgvector indexes it through a cast to `vector(n)`, per
# model: see db/embeddings.py), little-endian float32 bytes on SQLite.
VECTOR = LargeBinary().with_variant(ARRAY(REAL()), "postgresql")

# One vector per item and embedder (migration 0006). `content_hash` is the item's when it
# was embedded (a cheap "may have changed" test); `input_hash` is of the embedded text and
# the embedder, so an item whose other fields changed is not embedded again.
item_embeddings = Table(
    "item_embeddings",
    metadata,
    Column("item_id", Integer, primary_key=True, autoincrement=False),
    Column("embedder", String(200), primary_key=True),
    Column("dimension", Integer, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("input_hash", String(64), nullable=False),
    Column("embedding", VECTOR, nullable=False),
    Column("embedded_at", UtcDateTime, nullable=False, default=utcnow),
)

# Step outputs of runs whose steps run on Celery workers (`CATALOG_EXECUTOR=celery`): the
# chunk plan and the chunk reports, pickled, where every worker machine reads them (a
# worker's local disk is not shared). Keyed by run and `step/output[mapping]`; a
# re-execution reads its parent run's. `invalid_log_retention_job` deletes them after
# 30 days.
step_outputs = Table(
    "step_outputs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("output_key", String(1000), nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False, default=utcnow),
    UniqueConstraint("run_id", "output_key"),
    Index(None, "created_at"),
)
