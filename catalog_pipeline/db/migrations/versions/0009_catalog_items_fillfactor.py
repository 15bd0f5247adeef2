"""catalog_items: fillfactor 50 on PostgreSQL, so a re-scrape's updates stay on their page

A re-scrape updates every item it lists (file columns, often nothing else). With full
pages each update writes the new row version elsewhere and a new entry in every index of
the table; with half of each page kept free the new version goes on the same page and, as
no indexed column changes, as a heap-only tuple (HOT): no index work, and the old version
is pruned in place. Measured at 300,000 rows (docs/performance.md, issue 27): 287,045 of
288,158 re-run updates HOT (6,221 before), the re-run's upsert 27-40 % faster, the first
load's 7-16 % slower. The setting applies to pages written from now on; `VACUUM FULL
catalog_items` (which locks the table) rewrites the existing ones. SQLite has no such
setting: nothing changes there.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 11:00:00.000000
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

FILLFACTOR = 50


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE catalog_items SET (fillfactor = {FILLFACTOR})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE catalog_items RESET (fillfactor)")
