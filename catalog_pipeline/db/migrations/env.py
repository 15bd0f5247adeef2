"""Alembic environment: runs against the engine handed over by `catalog_pipeline.db.engine`."""

from alembic import context

from catalog_pipeline.db.tables import metadata

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
