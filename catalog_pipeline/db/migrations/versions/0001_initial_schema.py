"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 22:15:29.303122
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "source_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("object_key", sa.Text(), nullable=False),
        sa.Column("etag", sa.String(length=200), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_modified", sa.DateTime(timezone=True), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("rejected_reason", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("header", sa.Text(), nullable=True),
        sa.Column("data_start", sa.BigInteger(), nullable=True),
        sa.Column("chunk_bytes", sa.BigInteger(), nullable=True),
        sa.Column("chunk_count", sa.Integer(), nullable=True),
        sa.Column("has_bom", sa.Boolean(), nullable=True),
        sa.Column("rows_total", sa.BigInteger(), nullable=True),
        sa.Column("rows_valid", sa.BigInteger(), nullable=True),
        sa.Column("rows_invalid", sa.BigInteger(), nullable=True),
        sa.Column("verified_row_count", sa.BigInteger(), nullable=True),
        sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("superseded_by", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["superseded_by"],
            ["source_files.id"],
            name=op.f("fk_source_files_superseded_by_source_files"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_source_files")),
        sa.UniqueConstraint("object_key", "etag", name=op.f("uq_source_files_object_key_etag")),
    )
    with op.batch_alter_table("source_files", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_source_files_source"), ["source"], unique=False)
        batch_op.create_index(batch_op.f("ix_source_files_status"), ["status"], unique=False)

    op.create_table(
        "catalog_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sku", sa.String(length=200), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("brand", sa.Text(), nullable=True),
        sa.Column("category", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("price", sa.Float(), nullable=True),
        sa.Column("currency", sa.Text(), nullable=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("image_urls", sa.Text(), nullable=True),
        sa.Column("availability", sa.Text(), nullable=True),
        sa.Column("weight_grams", sa.Float(), nullable=True),
        sa.Column("play_count", sa.BigInteger(), nullable=True),
        sa.Column("external_id", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("object_key", sa.Text(), nullable=False),
        sa.Column("source_file_id", sa.Integer(), nullable=False),
        sa.Column("source_offset", sa.BigInteger(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_file_id"],
            ["source_files.id"],
            name=op.f("fk_catalog_items_source_file_id_source_files"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_items")),
        sa.UniqueConstraint("sku", name=op.f("uq_catalog_items_sku")),
    )
    with op.batch_alter_table("catalog_items", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_catalog_items_external_id"), ["external_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_catalog_items_source"), ["source"], unique=False)

    op.create_table(
        "invalid_item_logs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_file_id", sa.Integer(), nullable=False),
        sa.Column("object_key", sa.Text(), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("byte_offset", sa.BigInteger(), nullable=False),
        sa.Column("reasons", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_file_id"],
            ["source_files.id"],
            name=op.f("fk_invalid_item_logs_source_file_id_source_files"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invalid_item_logs")),
        sa.UniqueConstraint(
            "source_file_id",
            "byte_offset",
            name=op.f("uq_invalid_item_logs_source_file_id_byte_offset"),
        ),
    )
    with op.batch_alter_table("invalid_item_logs", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_invalid_item_logs_created_at"), ["created_at"], unique=False
        )

    op.create_table(
        "source_chunks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_file_id", sa.Integer(), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("byte_start", sa.BigInteger(), nullable=False),
        sa.Column("byte_end", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=True),
        sa.Column("valid", sa.BigInteger(), nullable=True),
        sa.Column("invalid", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["source_file_id"],
            ["source_files.id"],
            name=op.f("fk_source_chunks_source_file_id_source_files"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_source_chunks")),
        sa.UniqueConstraint(
            "source_file_id",
            "chunk_index",
            name=op.f("uq_source_chunks_source_file_id_chunk_index"),
        ),
    )
    op.create_table(
        "catalog_item_sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("source_file_id", sa.Integer(), nullable=False),
        sa.Column("byte_offset", sa.BigInteger(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["catalog_items.id"],
            name=op.f("fk_catalog_item_sources_item_id_catalog_items"),
        ),
        sa.ForeignKeyConstraint(
            ["source_file_id"],
            ["source_files.id"],
            name=op.f("fk_catalog_item_sources_source_file_id_source_files"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_item_sources")),
        sa.UniqueConstraint(
            "item_id", "source_file_id", name=op.f("uq_catalog_item_sources_item_id_source_file_id")
        ),
    )
    with op.batch_alter_table("catalog_item_sources", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_catalog_item_sources_source_file_id"), ["source_file_id"], unique=False
        )

    op.create_table(
        "item_classifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("classifier", sa.String(length=100), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("input_hash", sa.String(length=64), nullable=False),
        sa.Column("classified_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["catalog_items.id"],
            name=op.f("fk_item_classifications_item_id_catalog_items"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_item_classifications")),
        sa.UniqueConstraint(
            "item_id", "classifier", name=op.f("uq_item_classifications_item_id_classifier")
        ),
    )
    op.create_table(
        "playcount_backfill_queue",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=True),
        sa.Column("rank_score", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.String(length=20), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["catalog_items.id"],
            name=op.f("fk_playcount_backfill_queue_item_id_catalog_items"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_playcount_backfill_queue")),
        sa.UniqueConstraint("item_id", name=op.f("uq_playcount_backfill_queue_item_id")),
    )
    with op.batch_alter_table("playcount_backfill_queue", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_playcount_backfill_queue_status_rank_score"),
            ["status", "rank_score"],
            unique=False,
        )

    op.create_table(
        "playcount_measurements",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("origin", sa.String(length=20), nullable=False),
        sa.Column("measured_on", sa.Date(), nullable=False),
        sa.Column("play_count", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["item_id"],
            ["catalog_items.id"],
            name=op.f("fk_playcount_measurements_item_id_catalog_items"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_playcount_measurements")),
        sa.UniqueConstraint(
            "item_id",
            "origin",
            "measured_on",
            name=op.f("uq_playcount_measurements_item_id_origin_measured_on"),
        ),
    )
    op.create_table(
        "provider_calls",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=True),
        sa.Column("external_id", sa.Text(), nullable=True),
        sa.Column("called_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("quota_units", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["item_id"], ["catalog_items.id"], name=op.f("fk_provider_calls_item_id_catalog_items")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_calls")),
    )
    with op.batch_alter_table("provider_calls", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_provider_calls_called_at"), ["called_at"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("provider_calls", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_provider_calls_called_at"))

    op.drop_table("provider_calls")
    op.drop_table("playcount_measurements")
    with op.batch_alter_table("playcount_backfill_queue", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_playcount_backfill_queue_status_rank_score"))

    op.drop_table("playcount_backfill_queue")
    op.drop_table("item_classifications")
    with op.batch_alter_table("catalog_item_sources", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_catalog_item_sources_source_file_id"))

    op.drop_table("catalog_item_sources")
    op.drop_table("source_chunks")
    with op.batch_alter_table("invalid_item_logs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invalid_item_logs_created_at"))

    op.drop_table("invalid_item_logs")
    with op.batch_alter_table("catalog_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_catalog_items_source"))
        batch_op.drop_index(batch_op.f("ix_catalog_items_external_id"))

    op.drop_table("catalog_items")
    with op.batch_alter_table("source_files", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_source_files_status"))
        batch_op.drop_index(batch_op.f("ix_source_files_source"))

    op.drop_table("source_files")
