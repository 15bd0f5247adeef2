"""Invalid-log retention on SQLite and Postgres: exact deletes, batch caps, the schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
from sqlalchemy import func, insert, select

from catalog_pipeline.db.tables import invalid_item_logs, provider_calls, source_files
from catalog_pipeline.definitions import build_definitions
from catalog_pipeline.resources.catalog import CatalogDatabase
from catalog_pipeline.schedules.retention import invalid_log_retention_schedule

NOW = datetime.now(UTC)


def seed(engine, old: int, new: int) -> None:
    with engine.begin() as connection:
        file_id = connection.execute(
            insert(source_files)
            .values(
                object_key="k.csv",
                etag="e",
                source="k",
                observed_at=NOW,
                size=1,
                status="completed",
                created_at=NOW,
                updated_at=NOW,
            )
            .returning(source_files.c.id)
        ).scalar_one()
        rows = [
            {
                "source_file_id": file_id,
                "object_key": "k.csv",
                "chunk_index": 0,
                "byte_offset": offset,
                "reasons": '["bad_price"]',
                "raw": "x",
                "created_at": NOW - timedelta(days=120 if offset < old else 1),
            }
            for offset in range(old + new)
        ]
        connection.execute(insert(invalid_item_logs), rows)
        connection.execute(
            insert(provider_calls),
            [
                {"status": "200", "called_at": NOW - timedelta(days=days), "quota_units": 1}
                for days in (1, 500, 600)
            ],
        )


def remaining(engine) -> tuple[int, int, int]:
    cutoff = NOW - timedelta(days=90)
    with engine.connect() as connection:
        logs = connection.execute(select(invalid_item_logs.c.created_at)).scalars().all()
        calls = connection.execute(select(func.count()).select_from(provider_calls)).scalar()
    old = sum(1 for created in logs if created < cutoff)
    return old, len(logs) - old, calls


def run(engine, **config) -> dict:
    job = build_definitions({"catalog_db": CatalogDatabase(url=str(engine.url))}).resolve_job_def(
        "invalid_log_retention_job"
    )
    result = job.execute_in_process(run_config={"ops": {"delete_expired_rows": {"config": config}}})
    assert result.success
    (event,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
    return {
        key: value.value
        for key, value in event.step_output_data.metadata.items()
        if key.startswith("invalid_item_logs/")
    }


def test_two_runs_delete_exactly_the_old_rows_reporting_capped_only_when_rows_remain(engine):
    seed(engine, old=25_000, new=500)
    first = run(engine, batch_size=10_000, max_batches=2)
    assert first["invalid_item_logs/deleted"] == 20_000
    assert first["invalid_item_logs/batches"] == 2
    assert first["invalid_item_logs/capped"] is True
    assert remaining(engine) == (5_000, 500, 1)  # provider calls: 400-day window

    second = run(engine, batch_size=10_000)
    assert second["invalid_item_logs/deleted"] == 5_000
    assert second["invalid_item_logs/batches"] == 1
    assert "invalid_item_logs/capped" not in second
    assert remaining(engine) == (0, 500, 1)

    third = run(engine)
    assert third["invalid_item_logs/deleted"] == 0  # re-running changes nothing
    assert remaining(engine) == (0, 500, 1)


def test_a_cap_that_covers_the_need_is_not_reported_as_capped(engine):
    seed(engine, old=25_000, new=500)
    result = run(engine, batch_size=10_000, max_batches=3)
    assert result["invalid_item_logs/deleted"] == 25_000
    assert "invalid_item_logs/capped" not in result


def test_the_schedule_runs_daily_at_nine_utc():
    assert invalid_log_retention_schedule.cron_schedule == "0 9 * * *"
    assert invalid_log_retention_schedule.execution_timezone == "UTC"
    context = dg.build_schedule_context(
        scheduled_execution_time=datetime(2026, 11, 22, 9, tzinfo=UTC)
    )
    (request,) = invalid_log_retention_schedule.evaluate_tick(context).run_requests
    assert request.job_name is None or request.job_name == "invalid_log_retention_job"
