"""scraper realities: catalog_items.attributes, delisted_at and history_file_id;
source_files.delisted_items and delisting_held; invalid_item_logs.sku; catalog_item_history

Items stored before this revision get their current state as their first history row.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 07:00:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("catalog_items", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "attributes",
                sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                nullable=True,
            )
        )
        batch_op.add_column(sa.Column("delisted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("history_file_id", sa.Integer(), nullable=True))
    with op.batch_alter_table("source_files", schema=None) as batch_op:
        batch_op.add_column(sa.Column("delisted_items", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("delisting_held", sa.Text(), nullable=True))
    with op.batch_alter_table("invalid_item_logs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sku", sa.String(200), nullable=True))
    op.create_table(
        "catalog_item_history",
        sa.Column("item_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("source_file_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("price", sa.Float(), nullable=True),
        sa.Column("currency", sa.Text(), nullable=True),
        sa.Column("availability", sa.Text(), nullable=True),
        sa.Column("listed", sa.Boolean(), nullable=False),
        sa.Column("byte_offset", sa.BigInteger(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("item_id", "source_file_id", name="pk_catalog_item_history"),
    )
    op.execute(
        "INSERT INTO catalog_item_history (item_id, source_file_id, observed_at, price, "
        "currency, availability, listed, byte_offset, recorded_at) "
        "SELECT id, source_file_id, observed_at, price, currency, availability, "
        "(1 = 1), source_offset, updated_at FROM catalog_items"
    )
    op.execute("UPDATE catalog_items SET history_file_id = source_file_id")


def downgrade() -> None:
    op.drop_table("catalog_item_history")
    with op.batch_alter_table("invalid_item_logs", schema=None) as batch_op:
        batch_op.drop_column("sku")
    with op.batch_alter_table("source_files", schema=None) as batch_op:
        batch_op.drop_column("delisting_held")
        batch_op.drop_column("delisted_items")
    with op.batch_alter_table("catalog_items", schema=None) as batch_op:
        batch_op.drop_column("history_file_id")
        batch_op.drop_column("delisted_at")
        batch_op.drop_column("attributes")
