"""Bulk-written tables keep their references by construction, not by per-row FK checks

The ingest writes one `catalog_items`, one `catalog_item_sources` and usually one
`playcount_measurements` row per valid CSV row. On Postgres each foreign key there is a
trigger that runs a `SELECT … FOR KEY SHARE` on the parent for every row: measured at
about 22 µs a row, more than the upsert itself. The ids these columns hold are read from
their parent rows in the same transaction that writes them, and nothing deletes catalog
items or source files, so the constraints are dropped from these three tables only
(tests/db/test_referential_integrity.py checks that no row ever points nowhere).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 08:00:00.000000
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DROPPED = (
    ("catalog_items", "source_file_id", "source_files"),
    ("catalog_item_sources", "item_id", "catalog_items"),
    ("catalog_item_sources", "source_file_id", "source_files"),
    ("playcount_measurements", "item_id", "catalog_items"),
)


def _name(table: str, column: str, parent: str) -> str:
    return f"fk_{table}_{column}_{parent}"


def upgrade() -> None:
    for table in dict.fromkeys(table for table, _, _ in DROPPED):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for owner, column, parent in DROPPED:
                if owner == table:
                    batch_op.drop_constraint(_name(owner, column, parent), type_="foreignkey")


def downgrade() -> None:
    for table in dict.fromkeys(table for table, _, _ in DROPPED):
        with op.batch_alter_table(table, schema=None) as batch_op:
            for owner, column, parent in DROPPED:
                if owner == table:
                    batch_op.create_foreign_key(
                        _name(owner, column, parent), parent, [column], ["id"]
                    )
