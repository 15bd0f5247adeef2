"""Alembic environment: runs against the engine handed over by `catalog_pipeline.db.engine`."""

from alembic import context

from catalog_pipeline.db.tables import metadata

engine = context.config.attributes["engine"]
sqlite = engine.dialect.name == "sqlite"
with engine.connect() as connection:
    if sqlite:
        # Batch migrations rebuild a SQLite table (copy, drop, rename); with foreign keys
        # enforced, dropping a referenced table fails. The pragma is a no-op inside a
        # transaction, so it is set before one begins. A copy keeps every row, so a
        # reference broken after the migration was broken before: check that first,
        # while nothing has been touched.
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise RuntimeError(
                f"{len(broken)} row(s) point at rows that do not exist; fix them before "
                f"migrating (table, rowid, parent, key index): {broken[:5]}"
            )
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    try:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=sqlite,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    finally:
        if sqlite:
            connection.rollback()  # leave no transaction open, so the pragma applies
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
