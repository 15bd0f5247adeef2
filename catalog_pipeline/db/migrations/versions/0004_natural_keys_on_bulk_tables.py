"""Bulk-written tables: natural keys as primary keys, no indexes that no query uses

Every valid CSV row writes a `catalog_items` row, a `catalog_item_sources` row and a
`playcount_measurements` row; every index on them is one more insert per row (and its
WAL). Before this migration there were nine per new item:
- `catalog_items`: `ix_catalog_items_source` (one value per scraper: no query looks it up)
  and `ix_catalog_items_external_id` (every query asks only "has one", which a scan
  answers) are dropped;
- `catalog_item_sources` and `playcount_measurements`: a surrogate `id` that nothing read,
  next to the unique natural key. The natural key becomes the primary key; provenance's
  puts the file first, so it also serves "the items of a file" (classification scopes)
  and its separate index on `source_file_id` goes too.

Nine index inserts per new item become four. Measured on PostgreSQL with 4 chunks of the
benchmark file, one process: the write went from about 27.5 to 23.4 µs a row.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 15:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# table -> (its old unique natural key, the primary key that replaces it)
NATURAL_KEYS = {
    "catalog_item_sources": (("item_id", "source_file_id"), ("source_file_id", "item_id")),
    "playcount_measurements": (
        ("item_id", "origin", "measured_on"),
        ("item_id", "origin", "measured_on"),
    ),
}
DROPPED_INDEXES = (
    ("catalog_items", ("source",)),
    ("catalog_items", ("external_id",)),
    ("catalog_item_sources", ("source_file_id",)),
)


def _index(table: str, columns: tuple[str, ...]) -> str:
    return f"ix_{table}_{'_'.join(columns)}"


def _unique(table: str, columns: tuple[str, ...]) -> str:
    return f"uq_{table}_{'_'.join(columns)}"


def upgrade() -> None:
    with op.batch_alter_table("catalog_items", schema=None) as batch_op:
        for table, columns in DROPPED_INDEXES:
            if table == "catalog_items":
                batch_op.drop_index(_index(table, columns))
    for table, (unique, primary) in NATURAL_KEYS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for owner, columns in DROPPED_INDEXES:
                if owner == table:
                    batch_op.drop_index(_index(table, columns))
            batch_op.drop_constraint(_unique(table, unique), type_="unique")
            batch_op.drop_constraint(f"pk_{table}", type_="primary")
            batch_op.drop_column("id")
            batch_op.create_primary_key(f"pk_{table}", list(primary))


def _old_columns(table: str) -> list[sa.Column]:
    """The columns after `id` as 0001 created them (their FKs were dropped by 0003)."""
    if table == "catalog_item_sources":
        return [
            sa.Column("item_id", sa.Integer(), nullable=False),
            sa.Column("source_file_id", sa.Integer(), nullable=False),
            sa.Column("byte_offset", sa.BigInteger(), nullable=False),
            sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        ]
    return [
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("origin", sa.String(length=20), nullable=False),
        sa.Column("measured_on", sa.Date(), nullable=False),
        sa.Column("play_count", sa.BigInteger(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    ]


def downgrade() -> None:
    """Rebuild both tables with a numbered `id` key (rows numbered in natural-key order)."""
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, (unique, _) in NATURAL_KEYS.items():
        old = f"{table}_0004"
        if postgres:  # its name is taken again by the rebuilt table's key
            op.drop_constraint(f"pk_{table}", table, type_="primary")
        op.rename_table(table, old)
        columns = _old_columns(table)
        op.create_table(
            table,
            sa.Column("id", sa.Integer(), nullable=False),
            *columns,
            sa.PrimaryKeyConstraint("id", name=f"pk_{table}"),
            sa.UniqueConstraint(*unique, name=_unique(table, unique)),
        )
        names = ", ".join(column.name for column in columns)
        op.execute(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {old} ORDER BY {', '.join(unique)}"
        )
        op.drop_table(old)
    for table, columns in DROPPED_INDEXES:
        op.create_index(_index(table, columns), table, list(columns), unique=False)
