"""Playcount storage on SQLite and Postgres: scrape readings at ingest, the queue (enqueue,
ranking, reclaim, claims), the quota ledger, concurrent drains and a killed pass."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from catalog_pipeline.core.playcount import (
    BackfillPolicy,
    drain,
    fixed_clock,
    rank_score,
)
from catalog_pipeline.db.engine import make_engine
from catalog_pipeline.db.playcount import (
    PlaycountQueue,
    enqueue_missing,
    measurements,
    queue_counts,
    quota_used,
    reclaim,
)
from catalog_pipeline.db.tables import (
    catalog_items,
    playcount_backfill_queue,
    playcount_measurements,
    provider_calls,
)
from catalog_pipeline.resources.provider import StatsProviderClient
from tests.helpers import dump
from tests.playcount_support import HANG, KEY, history, ingest_scrape, scripted_provider, status

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
queue = playcount_backfill_queue


def url_of(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def item_ids(engine) -> dict[str, int]:
    with engine.connect() as connection:
        return dict(connection.execute(select(catalog_items.c.sku, catalog_items.c.id)).all())


def queue_rows(engine) -> dict[str, tuple]:
    """sku → (status, outcome, attempts, claimed_by)."""
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                catalog_items.c.sku,
                queue.c.status,
                queue.c.outcome,
                queue.c.attempts,
                queue.c.claimed_by,
            ).join(catalog_items, catalog_items.c.id == queue.c.item_id)
        )
        return {row[0]: tuple(row[1:]) for row in rows}


def ledger(engine) -> list[tuple]:
    with engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(
                select(
                    provider_calls.c.external_id,
                    provider_calls.c.status,
                    provider_calls.c.quota_units,
                ).order_by(provider_calls.c.id)
            )
        ]


def client(provider, timeout_seconds: int = 5) -> StatsProviderClient:
    return StatsProviderClient(provider.url, KEY, timeout_seconds)


def songs(count: int, plays=lambda i: 1000 - i) -> list[tuple]:
    return [(f"S{i:03d}", plays(i), f"ISRC{i:03d}") for i in range(count)]


# --- scrape readings at ingest -------------------------------------------------------------


def test_ingest_records_one_scrape_reading_per_item_and_day_idempotently(engine, local_bucket):
    rows = [("A", 10, "ISRC-A"), ("B", None, "ISRC-B"), ("C", '"1,200"', None)]
    ingest_scrape(local_bucket, engine, rows)
    ids = item_ids(engine)
    day = date(2026, 11, 1)
    assert measurements(engine) == sorted(
        [(ids["A"], "scrape", day, 10), (ids["C"], "scrape", day, 1200)]
    )
    before = dump(engine)
    ingest_scrape(local_bucket, engine, rows)  # the same file again: nothing changes
    assert dump(engine)["playcount_measurements"] == before["playcount_measurements"]


def test_readings_of_one_day_merge_by_maximum_whatever_the_order(engine, local_bucket):
    ingest_scrape(local_bucket, engine, [("A", 12, None)], "shop_2026-11-01T18-00-00.csv")
    ingest_scrape(local_bucket, engine, [("A", 11, None)], "shop_2026-11-01T06-00-00.csv")
    ingest_scrape(local_bucket, engine, [("A", 13, None)], "other_2026-11-01T12-00-00.csv")
    ingest_scrape(local_bucket, engine, [("A", 15, None)], "shop_2026-11-02T06-00-00.csv")
    ingest_scrape(local_bucket, engine, [("A", 9, None)], "other_2026-11-02T01-00-00.csv")
    a = item_ids(engine)["A"]
    assert measurements(engine) == [
        (a, "scrape", date(2026, 11, 1), 13),
        (a, "scrape", date(2026, 11, 2), 15),
    ]


# --- enqueue and ranking -------------------------------------------------------------------


def test_enqueue_ranks_by_latest_play_count_and_never_queues_twice(engine, local_bucket):
    ingest_scrape(
        local_bucket,
        engine,
        [("A", 5, "ISRC-A"), ("B", 500, "ISRC-B"), ("C", None, "ISRC-C"), ("D", 9, None)],
    )
    first = enqueue_missing(engine, T0)
    assert (first.enqueued, first.skipped) == (3, 0)
    again = enqueue_missing(engine, T0)
    assert (again.enqueued, again.skipped, again.reranked) == (0, 3, 0)

    with engine.connect() as connection:
        ranked = connection.execute(
            select(catalog_items.c.sku, queue.c.rank_score, catalog_items.c.play_count)
            .join(catalog_items, catalog_items.c.id == queue.c.item_id)
            .order_by(queue.c.rank_score.desc(), queue.c.id)
        ).all()
    assert [row.sku for row in ranked] == ["B", "A", "C"]
    assert all(row.rank_score == rank_score(row.play_count) for row in ranked)

    # A newer scrape changes a pending row's rank, and only that.
    ingest_scrape(local_bucket, engine, [("A", 900, "ISRC-A")], "shop_2026-11-02T06-00-00.csv")
    later = enqueue_missing(engine, T0)
    assert (later.enqueued, later.reranked) == (0, 1)
    with scripted_provider() as provider:
        provider.script("ISRC-A", history(1))
        report = drain(PlaycountQueue(engine, "w"), client(provider).fetch, 1, fixed_clock(T0))
    assert report.calls == 1 and provider.calls == {"ISRC-A": 1}


def test_items_with_provider_history_are_not_queued(engine, local_bucket):
    ingest_scrape(local_bucket, engine, [("A", 5, "ISRC-A"), ("B", 6, "ISRC-B")])
    with engine.begin() as connection:
        connection.execute(
            playcount_measurements.insert().values(
                item_id=item_ids(engine)["A"],
                origin="provider",
                measured_on=date(2026, 10, 1),
                play_count=3,
            )
        )
    result = enqueue_missing(engine, T0)
    assert (result.enqueued, result.skipped) == (1, 1)
    assert list(queue_rows(engine)) == ["B"]


# --- the quota and the ledger --------------------------------------------------------------


def test_the_quota_stops_the_drain_exactly_at_the_budget_and_every_call_is_in_the_ledger(
    engine, local_bucket
):
    ingest_scrape(local_bucket, engine, songs(8))
    enqueue_missing(engine, T0)
    with engine.begin() as connection:  # yesterday's calls never count against today
        connection.execute(
            provider_calls.insert().values(
                called_at=T0.replace(hour=0) - timedelta(seconds=1), status="200", quota_units=1
            )
        )
    store = PlaycountQueue(engine, "w")
    with scripted_provider() as provider:
        for _, _, external_id in songs(8):
            provider.script(external_id, history(1, 2))
        first = drain(store, client(provider).fetch, 5, fixed_clock(T0))
        assert (first.calls, first.stopped_by) == (5, "quota")
        assert quota_used(engine, T0) == 5
        assert sum(provider.calls.values()) == 5

        same_day = drain(store, client(provider).fetch, 5, fixed_clock(T0 + timedelta(hours=20)))
        assert (same_day.calls, same_day.stopped_by) == (0, "quota")

        next_day = drain(store, client(provider).fetch, 5, fixed_clock(T0 + timedelta(days=1)))
        assert (next_day.calls, next_day.stopped_by) == (3, "queue_empty")

    calls = ledger(engine)[1:]
    assert calls == [(f"ISRC{i:03d}", "200", 1) for i in range(8)]  # ranked order, one each
    assert sorted(provider.calls.values()) == [1] * 8
    assert queue_counts(engine) == {"pending": 0, "in_progress": 0, "done": 8, "failed": 0}
    assert len(measurements(engine)) == 8 + 16  # scrape readings + two provider days each


# --- reclaim ---------------------------------------------------------------------------------


def test_reclaim_returns_failed_rows_below_the_cap_and_keeps_capped_rows_failed(
    engine, local_bucket
):
    ingest_scrape(local_bucket, engine, songs(3))
    enqueue_missing(engine, T0)
    policy = BackfillPolicy(max_attempts=2)
    store = PlaycountQueue(engine, "w")
    with scripted_provider() as provider:
        for _, _, external_id in songs(3):
            provider.script(external_id, status(503))
        fetch = client(provider).fetch
        drain(store, fetch, 100, fixed_clock(T0), max_consecutive_failures=0)
        assert {row[:3] for row in queue_rows(engine).values()} == {("failed", "server_error", 1)}

        first = reclaim(engine, policy, T0 + timedelta(minutes=5))
        assert (first.failed_to_pending, first.at_cap) == (3, 0)
        assert reclaim(engine, policy, T0 + timedelta(minutes=6)).reclaimed == 0  # idempotent

        drain(
            store, fetch, 100, fixed_clock(T0 + timedelta(minutes=10)), max_consecutive_failures=0
        )
        second = reclaim(engine, policy, T0 + timedelta(minutes=15))
        assert (second.reclaimed, second.at_cap) == (0, 3)
        assert second.at_cap_sample == ("ISRC000", "ISRC001", "ISRC002")
        third = drain(store, fetch, 100, fixed_clock(T0 + timedelta(minutes=20)))
    assert third.calls == 0
    assert sum(provider.calls.values()) == 6  # two attempts each, then never again
    assert {row[:3] for row in queue_rows(engine).values()} == {("failed", "server_error", 2)}


def test_an_expired_claim_returns_to_pending_or_fails_on_its_last_attempt(engine, local_bucket):
    ingest_scrape(local_bucket, engine, songs(2))
    enqueue_missing(engine, T0)
    store = PlaycountQueue(engine, "killed-run")
    first, second = store.claim(T0, 100), store.claim(T0, 100)
    with engine.begin() as connection:  # the second row had used its last attempt already
        connection.execute(update(queue).where(queue.c.id == second.queue_id).values(attempts=3))
    policy = BackfillPolicy(max_attempts=3, lease=timedelta(hours=1))
    early = reclaim(engine, policy, T0 + timedelta(minutes=59))
    assert (early.reclaimed, early.expired_to_failed, early.abandoned_calls) == (0, 0, 0)
    late = reclaim(engine, policy, T0 + timedelta(minutes=61))
    assert (late.expired_to_pending, late.expired_to_failed, late.abandoned_calls) == (1, 1, 2)
    rows = queue_rows(engine)
    assert rows["S000"][:3] == ("pending", None, 1)
    assert rows["S001"][:3] == ("failed", "lease_expired", 3)
    assert late.at_cap == 1 and first.external_id == "ISRC000"
    assert [call[1] for call in ledger(engine)] == ["abandoned", "abandoned"]
    assert quota_used(engine, T0) == 2  # an abandoned call still cost its unit


# --- concurrency and a killed pass ---------------------------------------------------------


def _concurrent_drains(engine, daily_quota: int, count: int) -> tuple[list, object]:
    engines = [make_engine(url_of(engine)) for _ in range(2)]
    barrier = threading.Barrier(2)
    reports, errors = [None, None], []

    with scripted_provider(delay_seconds=0.02) as provider:
        for _, _, external_id in songs(count):
            provider.script(external_id, history(7))

        def work(n: int) -> None:
            try:
                barrier.wait(10)
                reports[n] = drain(
                    PlaycountQueue(engines[n], f"worker-{n}"),
                    client(provider).fetch,
                    daily_quota,
                    fixed_clock(T0),
                )
            except BaseException as error:  # surfaced below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    for other in engines:
        other.dispose()
    assert not errors, errors
    return reports, provider


def test_two_concurrent_drains_never_claim_the_same_row(engine, local_bucket):
    ingest_scrape(local_bucket, engine, songs(40))
    enqueue_missing(engine, T0)
    reports, provider = _concurrent_drains(engine, daily_quota=1_000, count=40)

    assert all(report.calls > 0 for report in reports)  # both really drained
    assert sum(report.calls for report in reports) == 40
    assert sorted(provider.calls.values()) == [1] * 40
    calls = ledger(engine)
    assert len(calls) == 40 and len({call[0] for call in calls}) == 40
    rows = queue_rows(engine)
    assert {row[:3] for row in rows.values()} == {("done", "ok", 1)}
    assert {row[3] for row in rows.values()} == {"worker-0", "worker-1"}


def test_six_concurrent_drains_share_each_days_quota_exactly(engine, local_bucket):
    """Every day all six start together and race for the last units of a quota of 5.

    Without the quota lock, Postgres overspends on most days (measured: 11 days of 12).
    """
    ingest_scrape(local_bucket, engine, songs(80))
    enqueue_missing(engine, T0)
    engines = [make_engine(url_of(engine)) for _ in range(6)]
    used, errors = [], []
    with scripted_provider() as provider:
        for _, _, external_id in songs(80):
            provider.script(external_id, history(1))
        for day in range(12):
            now = T0 + timedelta(days=day)
            barrier = threading.Barrier(6)

            def work(n: int, now=now, barrier=barrier) -> None:
                try:
                    barrier.wait(10)
                    store = PlaycountQueue(engines[n], f"worker-{n}")
                    report = drain(store, client(provider).fetch, 5, fixed_clock(now))
                    assert report.stopped_by == "quota"
                except BaseException as error:  # surfaced below
                    errors.append(error)

            threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            used.append(quota_used(engine, now))
    for other in engines:
        other.dispose()
    assert not errors, errors
    assert used == [5] * 12
    assert sum(provider.calls.values()) == 60 == len(ledger(engine))
    assert sorted(provider.calls.values()) == [1] * 60
    assert queue_counts(engine) == {"pending": 20, "in_progress": 0, "done": 60, "failed": 0}


KILLED_DRAIN = """
import sys
from catalog_pipeline.core.playcount import drain, fixed_clock, parse_moment
from catalog_pipeline.db.engine import make_engine
from catalog_pipeline.db.playcount import PlaycountQueue
from catalog_pipeline.resources.provider import StatsProviderClient
database_url, api_url, key, now = sys.argv[1:5]
store = PlaycountQueue(make_engine(database_url), "doomed-run")
drain(store, StatsProviderClient(api_url, key, 300).fetch, 100, fixed_clock(parse_moment(now)))
"""


def test_a_pass_killed_during_a_call_is_reclaimed_once_the_lease_is_past(engine, local_bucket):
    ingest_scrape(local_bucket, engine, songs(3))
    enqueue_missing(engine, T0)
    with scripted_provider() as provider:
        provider.script("ISRC000", HANG, history(4, 5))
        process = subprocess.Popen(
            [sys.executable, "-c", KILLED_DRAIN, url_of(engine), provider.url, KEY, T0.isoformat()],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            assert provider.hanging.wait(120), "the drain never called the provider"
        finally:
            process.kill()
            process.wait(30)

        assert queue_rows(engine)["S000"] == ("in_progress", None, 1, "doomed-run")
        assert ledger(engine) == [("ISRC000", "in_flight", 1)]
        policy = BackfillPolicy(lease=timedelta(hours=1))
        assert reclaim(engine, policy, T0 + timedelta(minutes=59)).reclaimed == 0
        assert queue_rows(engine)["S000"][0] == "in_progress"

        later = T0 + timedelta(minutes=61)
        result = reclaim(engine, policy, later)
        assert (result.expired_to_pending, result.abandoned_calls) == (1, 1)
        report = drain(
            PlaycountQueue(engine, "next-run"), client(provider).fetch, 100, fixed_clock(later)
        )
    assert report.calls == 3
    assert queue_rows(engine)["S000"] == ("done", "ok", 2, "next-run")
    assert [call[1] for call in ledger(engine)] == ["abandoned", "200", "404", "404"]
    assert quota_used(engine, later) == 4
    with engine.connect() as connection:
        provider_days = connection.execute(
            select(func.count())
            .select_from(playcount_measurements)
            .where(playcount_measurements.c.origin == "provider")
        ).scalar_one()
    assert provider_days == 2
