"""`playcount_history` through real Dagster runs against a local provider, on SQLite and
Postgres: every outcome of the contract, Retry-After, the attempts cap, the missing-URL
notice, and a key that never reaches the logs."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from sqlalchemy import select

from catalog_pipeline.assets.playcount import playcount_history
from catalog_pipeline.db.tables import catalog_items, playcount_backfill_queue, provider_calls
from catalog_pipeline.definitions import build_definitions
from catalog_pipeline.resources.catalog import CatalogDatabase
from catalog_pipeline.resources.provider import StatsProvider, StatsProviderClient
from catalog_pipeline.settings import PLAYCOUNT_API_KEY, PLAYCOUNT_API_URL
from tests.playcount_support import HANG, KEY, history, ingest_scrape, scripted_provider, status

T0 = datetime(2026, 11, 23, 0, 30, tzinfo=UTC)
queue = playcount_backfill_queue

# sku → (play count, what the provider answers, in order). Ranked by play count, so the
# 429 comes after every other kind of answer, and one item is left behind it.
CATALOG = {
    "OK": (600, [history(10, 20, 30)]),
    "GONE": (500, []),  # unscripted: 404
    "FORBIDDEN": (400, [status(403)]),
    "BROKEN": (300, [status(500)]),
    "SLOW": (200, [HANG]),
    "LIMITED": (100, [status(429, retry_after="120"), history(7)]),
    "BEHIND": (50, [history(1)]),
}


def seed(local_bucket, engine, provider) -> None:
    ingest_scrape(
        local_bucket,
        engine,
        [(sku, plays, f"ISRC-{sku}") for sku, (plays, _) in CATALOG.items()],
    )
    for sku, (_, answers) in CATALOG.items():
        if answers:
            provider.script(f"ISRC-{sku}", *answers)


def resources(engine, provider=None, **options) -> dict:
    url = engine.url.render_as_string(hide_password=False)
    stats = StatsProvider(
        api_url=provider.url if provider else None, api_key=KEY, timeout_seconds=1, **options
    )
    return {"catalog_db": CatalogDatabase(url=url), "stats_provider": stats}


def run_pass(instance, res: dict, now: datetime, **config) -> dict:
    result = dg.materialize(
        [playcount_history],
        instance=instance,
        resources=res,
        run_config={"ops": {"playcount_history": {"config": {"now": now.isoformat(), **config}}}},
    )
    assert result.success
    (materialization,) = result.asset_materializations_for_node("playcount_history")
    return {key: getattr(value, "value", value) for key, value in materialization.metadata.items()}


def states(engine) -> dict[str, tuple]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(catalog_items.c.sku, queue.c.status, queue.c.outcome, queue.c.attempts).join(
                catalog_items, catalog_items.c.id == queue.c.item_id
            )
        )
        return {row.sku: (row.status, row.outcome, row.attempts) for row in rows}


def drained(metadata: dict) -> dict[str, int]:
    return {
        key.split("/", 1)[1]: value
        for key, value in metadata.items()
        if key.startswith("drained/") and value
    }


def test_passes_end_with_the_contracts_outcomes_retry_only_what_may_be_retried_and_cap(
    engine, local_bucket
):
    with scripted_provider() as provider, dg.instance_for_test() as instance:
        seed(local_bucket, engine, provider)
        res = resources(engine, provider, daily_quota=100)

        first = run_pass(instance, res, T0, max_attempts=2)
        assert states(engine) == {
            "OK": ("done", "ok", 1),
            "GONE": ("done", "no_data", 1),
            "FORBIDDEN": ("done", "rejected", 1),
            "BROKEN": ("failed", "server_error", 1),
            "SLOW": ("failed", "timeout", 1),
            "LIMITED": ("failed", "rate_limited", 1),
            "BEHIND": ("pending", None, 0),  # the 429 stopped the pass before it
        }
        assert drained(first) == {
            "ok": 1,
            "no_data": 1,
            "rejected": 1,
            "server_error": 1,
            "timeout": 1,
            "rate_limited": 1,
        }
        assert (first["enqueued"], first["calls"], first["readings"]) == (7, 6, 3)
        assert (first["stopped_by"], first["quota_used"], first["quota_left"]) == (
            "rate_limited",
            6,
            94,
        )
        assert "no call before 2026-11-23 00:32:00 UTC" in first["notice"]
        assert first["queue/pending"] == 1 and first["dagster/row_count"] == 3

        # Within the Retry-After: the failed rows are reclaimed, the provider is not called.
        waiting = run_pass(instance, res, T0 + timedelta(minutes=1), max_attempts=2)
        assert (waiting["reclaimed"], waiting["calls"], waiting["stopped_by"]) == (
            3,
            0,
            "retry_after",
        )
        assert sum(provider.calls.values()) == 6

        # After it: only the reclaimed retryable rows and the one left behind are called.
        second = run_pass(instance, res, T0 + timedelta(minutes=10), max_attempts=2)
        assert (second["reclaimed"], second["enqueued"], second["skipped"]) == (0, 0, 7)
        assert drained(second) == {"ok": 2, "server_error": 1, "timeout": 1}
        assert second["stopped_by"] == "queue_empty"
        assert states(engine) == {
            "OK": ("done", "ok", 1),
            "GONE": ("done", "no_data", 1),
            "FORBIDDEN": ("done", "rejected", 1),
            "BROKEN": ("failed", "server_error", 2),
            "SLOW": ("failed", "timeout", 2),
            "LIMITED": ("done", "ok", 2),
            "BEHIND": ("done", "ok", 1),
        }

        # At the cap: they stay failed, are reported, and are never called again.
        third = run_pass(instance, res, T0 + timedelta(hours=2), max_attempts=2)
        assert (third["reclaimed"], third["calls"], third["at_attempts_cap"]) == (0, 0, 2)
        assert sorted(third["at_attempts_cap_sample"]) == ["ISRC-BROKEN", "ISRC-SLOW"]
        assert third["quota_used"] == 10 == sum(provider.calls.values())
        assert third["retried_after_cap"] == 0

        # `retry_failed` (the cause fixed, say): the capped rows get a fresh start and are
        # called once more; still failing, they count one attempt anew.
        fourth = run_pass(instance, res, T0 + timedelta(hours=3), max_attempts=2, retry_failed=True)
        assert (fourth["retried_after_cap"], fourth["calls"]) == (2, 2)
        assert drained(fourth) == {"server_error": 1, "timeout": 1}
        assert {sku: state for sku, state in states(engine).items() if state[0] == "failed"} == {
            "BROKEN": ("failed", "server_error", 1),
            "SLOW": ("failed", "timeout", 1),
        }

    assert dict(provider.calls) == {
        "ISRC-OK": 1,
        "ISRC-GONE": 1,
        "ISRC-FORBIDDEN": 1,
        "ISRC-BROKEN": 3,
        "ISRC-SLOW": 3,
        "ISRC-LIMITED": 2,
        "ISRC-BEHIND": 1,
    }
    with engine.connect() as connection:
        ledger = connection.execute(
            select(provider_calls.c.external_id, provider_calls.c.status).order_by(
                provider_calls.c.id
            )
        ).all()
    assert len(ledger) == 12
    assert [tuple(row) for row in ledger[:6]] == [
        ("ISRC-OK", "200"),
        ("ISRC-GONE", "404"),
        ("ISRC-FORBIDDEN", "403"),
        ("ISRC-BROKEN", "500"),
        ("ISRC-SLOW", "timeout"),
        ("ISRC-LIMITED", "429"),
    ]


def test_without_a_provider_url_the_drain_is_skipped_with_a_notice_and_the_rest_runs(
    engine, local_bucket
):
    ingest_scrape(local_bucket, engine, [("A", 5, "ISRC-A"), ("B", 9, None)])
    with dg.instance_for_test() as instance:
        metadata = run_pass(instance, resources(engine), T0)
        logs = [
            entry.user_message
            for run in instance.get_runs()
            for entry in instance.all_logs(run.run_id)
            if entry.level >= 30
        ]
    assert metadata["enqueued"] == 1 and metadata["calls"] == 0
    assert metadata["stopped_by"] == "not_configured"
    assert "PLAYCOUNT_API_URL is not set" in metadata["notice"]
    assert any("PLAYCOUNT_API_URL is not set" in message for message in logs)
    assert metadata["queue/pending"] == 1


def test_the_scheduled_job_reads_the_provider_from_the_environment_and_never_logs_the_key(
    monkeypatch, sqlite_engine, local_bucket
):
    ingest_scrape(local_bucket, sqlite_engine, [("A", 5, "ISRC-A"), ("B", 9, "ISRC-B")])
    with scripted_provider() as provider, dg.instance_for_test() as instance:
        provider.script("ISRC-A", status(401))
        provider.script("ISRC-B", history(3))
        monkeypatch.setenv(PLAYCOUNT_API_URL, provider.url)
        monkeypatch.setenv(PLAYCOUNT_API_KEY, KEY)
        definitions = build_definitions({"catalog_db": CatalogDatabase(url=str(sqlite_engine.url))})
        job = definitions.resolve_job_def("playcount_maintenance_job")
        result = job.execute_in_process(instance=instance)
        assert result.success
        texts = [
            str(entry.user_message) + str(entry.dagster_event)
            for entry in instance.all_logs(result.run_id)
        ]
        run_config = str(instance.get_run_by_id(result.run_id).run_config)
    assert provider.authorizations == {f"Bearer {KEY}"}
    assert states(sqlite_engine) == {"A": ("done", "rejected", 1), "B": ("done", "ok", 1)}
    assert not any(KEY in text for text in texts) and KEY not in run_config
    assert KEY not in repr(StatsProviderClient(provider.url, KEY, 1))


def ledger(engine) -> list[tuple[str, str]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(provider_calls.c.external_id, provider_calls.c.status).order_by(
                provider_calls.c.id
            )
        )
        return [tuple(row) for row in rows]


def refused_url() -> str:
    """A loopback URL nothing listens on: every connection is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# How the provider fails every call; the outcome and the ledger status each call gets.
FAILING = {
    "server_error": ([status(503)], "server_error", "503"),
    "timeout": ([HANG], "timeout", "timeout"),
    "unreachable": (None, "unreachable", "unreachable"),  # connection refused
}


@pytest.mark.parametrize("failure", sorted(FAILING))
def test_a_provider_failing_every_call_stops_the_pass_after_five_calls_in_a_row(
    failure, sqlite_engine, local_bucket
):
    """The breaker with its default (no `max_consecutive_failures` in the run config):
    an outage costs five rows an attempt each, not the whole queue its attempts."""
    answers, outcome, ledger_status = FAILING[failure]
    skus = [f"S{number}" for number in range(8)]
    ingest_scrape(
        local_bucket,
        sqlite_engine,
        [(sku, 1000 - number, f"ISRC-{sku}") for number, sku in enumerate(skus)],
    )
    with scripted_provider() as provider, dg.instance_for_test() as instance:
        for sku in skus:
            provider.script(f"ISRC-{sku}", *(answers or [history(1)]))
        url = provider.url if answers else refused_url()
        stats = StatsProvider(api_url=url, api_key=KEY, timeout_seconds=1, daily_quota=100)
        res = {**resources(sqlite_engine), "stats_provider": stats}
        metadata = run_pass(instance, res, T0)

    assert (metadata["calls"], metadata["stopped_by"]) == (5, "provider_failing")
    assert drained(metadata) == {outcome: 5}
    assert (metadata["quota_used"], metadata["queue/failed"], metadata["queue/pending"]) == (
        5,
        5,
        3,
    )
    assert (
        states(sqlite_engine)
        == {
            **{sku: ("failed", outcome, 1) for sku in skus[:5]},  # the best-ranked five
            **{sku: ("pending", None, 0) for sku in skus[5:]},  # never called
        }
    )
    assert ledger(sqlite_engine) == [(f"ISRC-{sku}", ledger_status) for sku in skus[:5]]
    assert sum(provider.calls.values()) == (5 if answers else 0)


def test_only_failures_in_a_row_count_towards_the_stop_whatever_their_kind(engine, local_bucket):
    """Four failures, then a usable answer (a 404) starts the count again; five more of
    mixed kinds (5xx and timeouts) in a row then stop the pass after ten calls."""
    plan = [
        ("A", [status(500)]),
        ("B", [status(502)]),
        ("C", [HANG]),
        ("D", [status(503)]),
        ("E", []),  # unscripted: 404, no data, a usable answer
        ("F", [status(500)]),
        ("G", [HANG]),
        ("H", [status(504)]),
        ("I", [HANG]),
        ("J", [status(500)]),
        ("K", [history(4)]),
        ("L", [history(5)]),
    ]
    ingest_scrape(
        local_bucket,
        engine,
        [(sku, 1000 - number, f"ISRC-{sku}") for number, (sku, _) in enumerate(plan)],
    )
    with scripted_provider() as provider, dg.instance_for_test() as instance:
        for sku, answers in plan:
            if answers:
                provider.script(f"ISRC-{sku}", *answers)
        metadata = run_pass(instance, resources(engine, provider, daily_quota=100), T0)

    assert (metadata["calls"], metadata["stopped_by"]) == (10, "provider_failing")
    assert drained(metadata) == {"server_error": 6, "timeout": 3, "no_data": 1}
    assert [external_id for external_id, _ in ledger(engine)] == [
        f"ISRC-{sku}" for sku, _ in plan[:10]
    ]
    after = states(engine)
    assert after["E"] == ("done", "no_data", 1)
    assert after["K"] == after["L"] == ("pending", None, 0)


def test_an_external_id_is_one_path_segment():
    client = StatsProviderClient("https://stats.example/v1/", None, 5)
    assert client.url_for("../admin?x=1#y") == (
        "https://stats.example/v1/items/..%2Fadmin%3Fx%3D1%23y/playcounts"
    )
