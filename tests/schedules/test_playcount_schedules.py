"""Playcount schedules: their run requests, and their jobs on a real instance (SQLite and
Postgres), including a database error that must fail the reclaim run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
from sqlalchemy import select, text, update

from catalog_pipeline.core.playcount import drain, fixed_clock
from catalog_pipeline.db.playcount import PlaycountQueue, enqueue_missing, queue_counts
from catalog_pipeline.db.tables import catalog_items, playcount_backfill_queue
from catalog_pipeline.definitions import build_definitions, defs
from catalog_pipeline.resources.catalog import CatalogDatabase
from catalog_pipeline.resources.provider import StatsProvider, StatsProviderClient
from catalog_pipeline.schedules.playcount import (
    backfill_reclaim_schedule,
    playcount_maintenance_schedule,
)
from tests.playcount_support import KEY, ingest_scrape, scripted_provider, status

T0 = datetime(2026, 11, 23, 3, 0, tzinfo=UTC)


def url_of(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def run_request(schedule: dg.ScheduleDefinition, moment: datetime) -> dg.RunRequest:
    context = dg.build_schedule_context(scheduled_execution_time=moment)
    (request,) = schedule.evaluate_tick(context).run_requests
    return request


def test_the_schedules_are_on_by_default_in_utc_and_request_their_jobs():
    assert backfill_reclaim_schedule.cron_schedule == "15 * * * *"
    assert playcount_maintenance_schedule.cron_schedule == "30 0 * * *"
    for schedule in (backfill_reclaim_schedule, playcount_maintenance_schedule):
        assert schedule.execution_timezone == "UTC"
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
        assert defs.resolve_schedule_def(schedule.name) is not None
    assert run_request(backfill_reclaim_schedule, T0).job_name in (None, "backfill_reclaim_job")
    maintenance = run_request(playcount_maintenance_schedule, T0)
    assert maintenance.job_name in (None, "playcount_maintenance_job")
    job = defs.resolve_job_def("playcount_maintenance_job")
    assert job.asset_layer.executable_asset_keys == {dg.AssetKey("playcount_history")}


def _failed_and_expired_rows(engine, local_bucket) -> None:
    """Two rows failed by a 500 (one of them at the cap of 2), one claim left by a dead run."""
    ingest_scrape(local_bucket, engine, [(f"S{i}", 100 - i, f"ISRC{i}") for i in range(3)])
    enqueue_missing(engine, T0)
    with scripted_provider() as provider:
        provider.script("ISRC0", status(500))
        provider.script("ISRC1", status(500))
        fetch = StatsProviderClient(provider.url, KEY, 5).fetch
        drain(PlaycountQueue(engine, "a"), fetch, 2, fixed_clock(T0), max_consecutive_failures=0)
        isrc0 = select(catalog_items.c.id).where(catalog_items.c.external_id == "ISRC0")
        with engine.begin() as connection:  # ISRC0 has now used both its attempts
            connection.execute(
                update(playcount_backfill_queue)
                .where(playcount_backfill_queue.c.item_id == isrc0.scalar_subquery())
                .values(attempts=2)
            )
    assert PlaycountQueue(engine, "dead-run").claim(T0 + timedelta(days=1), 10) is not None


def test_the_reclaim_job_from_its_schedule_returns_work_and_reports_the_capped(
    engine, local_bucket
):
    _failed_and_expired_rows(engine, local_bucket)
    assert queue_counts(engine) == {"pending": 0, "in_progress": 1, "done": 0, "failed": 2}
    job = build_definitions({"catalog_db": CatalogDatabase(url=url_of(engine))}).resolve_job_def(
        "backfill_reclaim_job"
    )
    request = run_request(backfill_reclaim_schedule, T0)
    now = T0 + timedelta(days=1, hours=2)
    config = {
        "ops": {"reclaim_backfill_queue": {"config": {"now": now.isoformat(), "max_attempts": 2}}}
    }
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(run_config=config, instance=instance, tags=request.tags)
        assert result.success
        assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
        (output,) = [
            event
            for event in result.all_events
            if event.event_type == dg.DagsterEventType.STEP_OUTPUT
        ]
        metadata = {k: v.value for k, v in output.step_output_data.metadata.items()}
        again = job.execute_in_process(run_config=config, instance=instance)
        (output_again,) = [
            event
            for event in again.all_events
            if event.event_type == dg.DagsterEventType.STEP_OUTPUT
        ]
    assert metadata["reclaimed_failed"] == 1  # ISRC1, one attempt of two
    assert metadata["reclaimed_expired_claims"] == 1  # ISRC2's dead claim
    assert metadata["abandoned_calls"] == 1
    assert metadata["at_attempts_cap"] == 1 and metadata["at_attempts_cap_sample"] == ["ISRC0"]
    assert queue_counts(engine) == {"pending": 2, "in_progress": 0, "done": 0, "failed": 1}
    rerun = {k: v.value for k, v in output_again.step_output_data.metadata.items()}
    assert rerun["reclaimed"] == 0 and rerun["at_attempts_cap"] == 1  # nothing changes twice


def test_a_database_error_fails_the_reclaim_run_instead_of_reporting_zero(engine):
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE playcount_backfill_queue"))
    job = build_definitions({"catalog_db": CatalogDatabase(url=url_of(engine))}).resolve_job_def(
        "backfill_reclaim_job"
    )
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    assert "playcount_backfill_queue" in str(failure.step_failure_data.error)


def test_the_maintenance_schedule_materializes_playcount_history(engine, local_bucket):
    ingest_scrape(local_bucket, engine, [("A", 5, "ISRC-A"), ("B", 6, "ISRC-B")])
    request = run_request(playcount_maintenance_schedule, T0)
    with scripted_provider() as provider, dg.instance_for_test() as instance:
        provider.script("ISRC-A", status(404))
        res = {
            "catalog_db": CatalogDatabase(url=url_of(engine)),
            "stats_provider": StatsProvider(api_url=provider.url, api_key=KEY),
        }
        job = build_definitions(res).resolve_job_def("playcount_maintenance_job")
        result = job.execute_in_process(instance=instance, tags=request.tags)
        assert result.success
        record = instance.get_latest_materialization_event(dg.AssetKey("playcount_history"))
    assert record is not None and record.run_id == result.run_id
    metadata = record.asset_materialization.metadata
    assert metadata["enqueued"].value == 2 and metadata["calls"].value == 2
    assert metadata["drained/no_data"].value == 2  # both unknown to the provider
    assert queue_counts(engine)["done"] == 2
