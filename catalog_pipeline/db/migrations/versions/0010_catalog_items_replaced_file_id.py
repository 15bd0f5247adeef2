"""catalog_items.replaced_file_id: the file whose record an item's last update replaced

The upsert's `RETURNING` (PostgreSQL 15) sees only the new row. Filled by the upsert's
SET with the stored `source_file_id`, this column tells it whether the item came from
another file: then no chunk of this file can have written the item's provenance or
history row (stored precedence only grows, so a file that beats the stored record never
lost on that item before), and both go in with a plain INSERT instead of ON CONFLICT's
speculative insertion, as for a new item. A re-scrape updates nearly every item it lists,
so this is the re-run's common case (docs/performance.md, issue 27). NULL for an item
never updated since it was inserted (or since this migration).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 16:10:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("catalog_items") as batch_op:
        batch_op.add_column(sa.Column("replaced_file_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("catalog_items") as batch_op:
        batch_op.drop_column("replaced_file_id")
