"""failures are state: source_files.failed_chunks, ingest_run_failures, ingest_leases,
derivation_failures, repair_history

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 21:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("source_files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failed_chunks", sa.Text(), nullable=True))
    op.create_table(
        "ingest_run_failures",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("object_key", sa.Text(), nullable=False),
        sa.Column("etag", sa.String(200), nullable=True),
        sa.Column("source_file_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("run_id", name="pk_ingest_run_failures"),
    )
    op.create_index("ix_ingest_run_failures_object_key", "ingest_run_failures", ["object_key"])
    op.create_table(
        "ingest_leases",
        sa.Column("object_key", sa.Text(), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("holder_host", sa.Text(), nullable=True),
        sa.Column("holder_pid", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("object_key", name="pk_ingest_leases"),
    )
    op.create_table(
        "derivation_failures",
        sa.Column("item_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("deriver", sa.String(200), nullable=False),
        sa.Column("input_hash", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("first_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("item_id", "deriver", name="pk_derivation_failures"),
    )
    op.create_table(
        "repair_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("object_key", sa.Text(), nullable=False),
        sa.Column("source_file_id", sa.Integer(), nullable=True),
        sa.Column("ingested_etag", sa.String(200), nullable=True),
        sa.Column("current_etag", sa.String(200), nullable=True),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_repair_history"),
    )
    op.create_index("ix_repair_history_object_key", "repair_history", ["object_key"])


def downgrade() -> None:
    op.drop_index("ix_repair_history_object_key", table_name="repair_history")
    op.drop_table("repair_history")
    op.drop_table("derivation_failures")
    op.drop_table("ingest_leases")
    op.drop_index("ix_ingest_run_failures_object_key", table_name="ingest_run_failures")
    op.drop_table("ingest_run_failures")
    with op.batch_alter_table("source_files", schema=None) as batch_op:
        batch_op.drop_column("failed_chunks")
