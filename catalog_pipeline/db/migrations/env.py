"""Alembic environment: runs against the engine handed over by `catalog_pipeline.db.engine`."""

from alembic import context

from catalog_pipeline.db.tables import metadata

engine = context.config.attributes["engine"]
sqlite = engine.dialect.name == "sqlite"
with engine.connect() as connection:
    if sqlite:
        # Batch migrations rebuild a SQLite table (copy, drop, rename); with foreign keys
        # enforced, dropping a referenced table fails. The pragma is a no-op inside a
        # transaction, so it is set before one begins, and checked again after.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=sqlite,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"migration left rows pointing nowhere: {broken[:5]}")
    connection.commit()
    if sqlite:
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")
