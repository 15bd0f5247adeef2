"""item_embeddings: one vector per item and embedder; on PostgreSQL with pgvector, the
HNSW index of the default embedder

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 01:00:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "item_embeddings",
        sa.Column("item_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("embedder", sa.String(200), nullable=False),
        sa.Column("dimension", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("input_hash", sa.String(64), nullable=False),
        sa.Column(
            "embedding",
            sa.LargeBinary().with_variant(postgresql.ARRAY(sa.REAL()), "postgresql"),
            nullable=False,
        ),
        sa.Column("embedded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("item_id", "embedder", name="pk_item_embeddings"),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        # The index of the default embedder, where the server has pgvector; without it the
        # table still works for everything else, and `embed`/`search` say which package
        # to install (db/embeddings.py creates each embedder's index when first used).
        from catalog_pipeline.db.embeddings import try_vector_index

        try_vector_index(bind, "hashing-v1@256", 256)


def downgrade() -> None:
    op.drop_table("item_embeddings")
