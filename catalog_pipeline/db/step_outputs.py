"""The `step_outputs` table: pickled step outputs of runs on Celery workers."""

from __future__ import annotations

from sqlalchemy import Engine, select

from catalog_pipeline.db.engine import dialect_insert
from catalog_pipeline.db.tables import step_outputs, utcnow


def store_output(engine: Engine, run_id: str, output_key: str, value: bytes) -> None:
    """Write (or, for a redelivered step, overwrite) one output of a run."""
    with engine.begin() as connection:
        statement = dialect_insert(connection)(step_outputs).values(
            run_id=run_id, output_key=output_key, value=value, created_at=utcnow()
        )
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=[step_outputs.c.run_id, step_outputs.c.output_key],
                set_={
                    "value": statement.excluded.value,
                    "created_at": statement.excluded.created_at,
                },
            )
        )


def load_output(engine: Engine, run_id: str, output_key: str) -> bytes | None:
    with engine.connect() as connection:
        return connection.execute(
            select(step_outputs.c.value).where(
                step_outputs.c.run_id == run_id, step_outputs.c.output_key == output_key
            )
        ).scalar_one_or_none()
