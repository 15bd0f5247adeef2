"""`new_csv_objects_sensor` at bucket scale: a time-budgeted sweep over many pages and
ticks, compared with the catalog database in batches, never with the whole partition set.

Time is a fake clock that advances 1 ms per object listed (the listing is what a tick
spends its budget on), so how far a tick gets is exact on any machine. Every tick is
evaluated as the daemon evaluates it (`evaluate_tick`, with Dagster's own validation of
the requested partitions) on a real instance, bucket and catalog.
"""

from __future__ import annotations

import json
import types
from collections import Counter
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test
from sqlalchemy import insert, select

from catalog_pipeline import discovery
from catalog_pipeline.assets.partitions import partition_key_for, source_csvs
from catalog_pipeline.core.bucket import LocalBucket, ObjectInfo
from catalog_pipeline.db.partitions import RETENTION_DAYS_SETTING
from catalog_pipeline.db.tables import source_files
from catalog_pipeline.definitions import build_definitions
from catalog_pipeline.resources.catalog import BucketResource, CatalogDatabase
from catalog_pipeline.sensors.objects import (
    ETAG_TAG,
    OBJECT_KEY_TAG,
    RUN_KEY_TAG,
    SENSOR_NAME_TAG,
    SweepCursor,
    build_new_csv_objects_sensor,
)

BODY = b"sku,name,url\nA-1,Tent,https://shop.example.com/a\n"
SECONDS_PER_LISTED_OBJECT = 0.001
SENSOR = "new_csv_objects_sensor"


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()
LISTED: list[int] = []  # objects listed per tick
FAIL_AFTER: list[int] = []  # list this many objects, then fail once with a transient error


class TimedBucketResource(BucketResource):
    """The real bucket; listing an object costs 1 ms of the fake clock, and is counted."""

    def open(self):
        inner = super().open()
        LISTED.append(0)

        class Timed:
            url = inner.url

            def list_objects(self, start_after=None):
                for info in inner.list_objects(start_after=start_after):
                    if FAIL_AFTER and LISTED[-1] >= FAIL_AFTER[0]:
                        FAIL_AFTER.clear()
                        raise ConnectionResetError("connection reset by peer")
                    LISTED[-1] += 1
                    CLOCK.now += SECONDS_PER_LISTED_OBJECT
                    yield info

            def __getattr__(self, name):
                return getattr(inner, name)

        return Timed()


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch):
    monkeypatch.setattr(discovery, "time", types.SimpleNamespace(monotonic=CLOCK))
    LISTED.clear()
    FAIL_AFTER.clear()


class Daemon:
    """Ticks the sensor as the daemon does: evaluates it with Dagster's validation of the
    run requests, applies its partition requests, keeps its cursor and (with `launch`)
    creates a run per request with the tags the daemon puts on it."""

    def __init__(self, instance, bucket_url: str, engine, endpoint_url=None, **options):
        self.instance = instance
        self.resources = {
            "bucket": TimedBucketResource(url=bucket_url, endpoint_url=endpoint_url),
            "catalog_db": CatalogDatabase(url=engine.url.render_as_string(hide_password=False)),
        }
        # Listing ahead in a thread would move the fake clock while a page is compared:
        # exact counts need it off (`test_listing_ahead_…` runs it on).
        options.setdefault("prefetch", False)
        self.sensor = build_new_csv_objects_sensor(**options)
        self.repository = build_definitions(self.resources).get_repository_def()
        self.cursor: str | None = None
        self.requested: Counter = Counter()  # run keys over all ticks

    def tick(self, launch: bool = False):
        context = dg.build_sensor_context(
            instance=self.instance,
            instance_ref=self.instance.get_ref(),
            cursor=self.cursor,
            resources=self.resources,
            repository_def=self.repository,
        )
        result = self.sensor.evaluate_tick(context)
        for request in result.dynamic_partitions_requests:
            self.instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        self.cursor = result.cursor  # a skipped tick returns the cursor it was given
        self.requested.update(request.run_key for request in result.run_requests)
        if launch:
            for request in result.run_requests:
                create_run_for_test(
                    self.instance,
                    job_name="catalog_ingest_job",
                    status=dg.DagsterRunStatus.NOT_STARTED,
                    tags={**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: SENSOR},
                )
        return result

    def sweep(self, launch: bool = False, max_ticks: int = 100) -> list:
        """Ticks until the sweep reaches the end of the bucket."""
        results = []
        while len(results) < max_ticks:
            results.append(self.tick(launch))
            if SweepCursor.parse(results[-1].cursor).new_sweep:
                return results
        raise AssertionError(f"no full sweep in {max_ticks} ticks")


def after(cursor: str | None) -> str | None:
    """Where the next tick lists from ("": the start of a new sweep)."""
    return None if cursor is None else json.loads(cursor)["after"]


def keys_of(results) -> list[str]:
    return sorted(r.tags[OBJECT_KEY_TAG] for result in results for r in result.run_requests)


def record(engine, infos: list[ObjectInfo], status: str = "completed", age_days: float = 0):
    """`source_files` rows for these versions, as ingests `age_days` ago left them."""
    at = datetime.now(UTC) - timedelta(days=age_days)
    rows = [
        {
            "object_key": info.key,
            "etag": info.etag,
            "source": "shop",
            "observed_at": at,
            "size": info.size,
            "status": status,
            "created_at": at,
            "updated_at": at,
        }
        for info in infos
    ]
    with engine.begin() as connection:
        connection.execute(insert(source_files), rows)


def write(bucket: LocalBucket, keys: list[str], body: bytes = BODY) -> None:
    for key in keys:
        path = bucket.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)


def test_a_budgeted_sweep_spans_pages_and_ticks_and_finds_every_version_once(
    local_bucket, sqlite_engine
):
    good = [f"shop{n % 7}/scrape_{n:05d}.csv" for n in range(1000)]
    write(local_bucket, good)
    write(local_bucket, [f"bad/empty_{n}.csv" for n in range(3)], b"")
    write(local_bucket, ["shop0/notes.txt", "shop0/.unfinished.csv"])
    with dg.instance_for_test() as instance:
        daemon = Daemon(
            instance,
            local_bucket.url,
            sqlite_engine,
            page_size=100,
            list_budget_seconds=0.25,
            request_limit=10_000,
        )
        first = daemon.sweep(launch=True)
        # Every tick handles two pages of new objects and stops at the third one's first
        # object to probe (250 ms of listing at 1 ms an object); the last tick's pages
        # (200 and 4 objects) fit the budget: a sweep of five ticks.
        assert LISTED == [300, 300, 300, 300, 204]
        assert keys_of(first) == sorted(good)  # each once, nothing hidden or not a CSV
        assert set(daemon.requested.values()) == {1}
        rejected = [e for result in first for e in result.asset_events]
        assert len(rejected) == 6  # a materialization and a failed check per empty file
        assert set(instance.get_dynamic_partitions(source_csvs.name)) == {
            partition_key_for(key) for key in [*good, *(f"bad/empty_{n}.csv" for n in range(3))]
        }

        # The next sweep: the runs are still queued (their versions not yet in the
        # catalog) and the rejections are recorded: nothing is probed or requested again.
        # With nothing to probe a tick lists three pages (300 ms) before the budget stops it.
        LISTED.clear()
        second = daemon.sweep(launch=True)
        assert LISTED == [300, 300, 300, 104]
        assert keys_of(second) == [] and not any(r.asset_events for r in second)

        # The runs ingest their files; an object is overwritten, and a key that sorts
        # before the cursor appears in the middle of a sweep.
        record(sqlite_engine, [local_bucket.head(key) for key in good])
        overwritten = local_bucket.put(good[500], BODY + b"A-2,Stove,https://shop.example.com/b\n")
        third = [daemon.tick(launch=True)]
        write(local_bucket, ["a_first.csv"])
        third += daemon.sweep(launch=True)
        assert keys_of(third) == [good[500]]
        (request,) = [r for result in third for r in result.run_requests]
        assert request.tags[ETAG_TAG] == overwritten.etag
        fourth = daemon.sweep(launch=True)  # the wrap-around finds the early key
        assert keys_of(fourth) == ["a_first.csv"]
        assert set(daemon.requested.values()) == {1}  # no version was ever asked for twice


def test_listing_ahead_finds_every_version_once_and_stays_within_a_page_of_the_budget(
    local_bucket, sqlite_engine
):
    keys = [f"shop{n % 7}/scrape_{n:05d}.csv" for n in range(1000)]
    write(local_bucket, keys)
    with dg.instance_for_test() as instance:
        daemon = Daemon(
            instance,
            local_bucket.url,
            sqlite_engine,
            page_size=100,
            list_budget_seconds=0.25,
            prefetch=True,
        )
        first = daemon.sweep(launch=True)
        assert keys_of(first) == sorted(keys) and set(daemon.requested.values()) == {1}
        assert 1 < len(first) <= 10 and max(LISTED) <= 500  # budget, a page, one ahead
        assert keys_of(daemon.sweep(launch=True)) == []
        record(sqlite_engine, [local_bucket.head(key) for key in keys])
        overwritten = local_bucket.put(keys[700], BODY + b"A-2,Stove,https://shop.example.com/b\n")
        again = daemon.sweep(launch=True) + daemon.sweep(launch=True)
        assert [r.tags[ETAG_TAG] for result in again for r in result.run_requests] == [
            overwritten.etag
        ]


def test_an_s3_bucket_is_swept_page_by_page_across_ticks(s3_bucket, s3_server, sqlite_engine):
    keys = [
        f"{s3_bucket.prefix}shop{n % 3}_2026-11-01T06-{n // 60:02d}-{n % 60:02d}.csv"
        for n in range(240)
    ]
    for key in keys:
        s3_bucket.put(key, BODY)
    with dg.instance_for_test() as instance:
        daemon = Daemon(
            instance,
            s3_bucket.url,
            sqlite_engine,
            endpoint_url=s3_server,
            page_size=50,
            list_budget_seconds=0.075,
        )
        first = daemon.sweep(launch=True)
        # A page handled a tick, then stopped at the next page's first object to probe.
        assert LISTED == [100, 100, 100, 90, 40]
        assert keys_of(first) == sorted(keys)
        record(sqlite_engine, list(s3_bucket.list_objects()))
        again = s3_bucket.put(keys[100], BODY + b"A-2,Stove,https://shop.example.com/b\n")
        second = daemon.sweep(launch=True)
        assert [r.tags[ETAG_TAG] for result in second for r in result.run_requests] == [again.etag]
        assert set(daemon.requested.values()) == {1}


def test_a_tick_asks_the_instance_only_about_the_keys_it_lists(
    local_bucket, sqlite_engine, monkeypatch
):
    """With 20,000 live partitions, a tick never loads the partition set (it would grow
    with every object ever seen): it asks about a page's keys, in one bounded query."""
    known = [f"shop/known_{n:04d}.csv" for n in range(300)]
    write(local_bucket, known)
    record(sqlite_engine, [local_bucket.head(key) for key in known])
    write(local_bucket, ["shop/new_1.csv", "shop/new_2.csv"])
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(
            source_csvs.name,
            [partition_key_for(key) for key in known] + [f"old_{n}.csv" for n in range(20_000)],
        )
        asked: list[int] = []
        real_existing = instance.get_existing_dynamic_partitions

        def existing(name, keys):
            asked.append(len(keys))
            return real_existing(name, keys)

        def whole_set(*args, **kwargs):
            raise AssertionError("the sensor loaded the whole partition set")

        monkeypatch.setattr(instance, "get_existing_dynamic_partitions", existing)
        monkeypatch.setattr(instance, "get_dynamic_partitions", whole_set)
        monkeypatch.setattr(instance, "get_paginated_dynamic_partitions", whole_set)
        daemon = Daemon(instance, local_bucket.url, sqlite_engine, page_size=100)
        (result,) = daemon.sweep()
        assert keys_of([result]) == ["shop/new_1.csv", "shop/new_2.csv"]
        assert result.dynamic_partitions_requests[0].partition_keys == [
            "shop/new_1.csv",
            "shop/new_2.csv",
        ]
        assert asked and max(asked) <= 100  # a page's recorded keys, then the new ones


def test_a_fresh_instance_requests_what_the_catalog_holds_unless_its_partition_is_retired(
    local_bucket, sqlite_engine, monkeypatch
):
    write(local_bucket, [f"recent_{n}.csv" for n in range(3)])
    write(local_bucket, [f"settled_{n}.csv" for n in range(3)])
    write(local_bucket, ["failed_0.csv"])
    head = local_bucket.head
    record(sqlite_engine, [head(f"recent_{n}.csv") for n in range(3)], age_days=2)
    record(sqlite_engine, [head(f"settled_{n}.csv") for n in range(3)], age_days=40)
    record(sqlite_engine, [head("failed_0.csv")], status="failed", age_days=40)
    with dg.instance_for_test() as instance:  # no partitions: a fresh instance
        (result,) = Daemon(instance, local_bucket.url, sqlite_engine).sweep()
        expected = ["failed_0.csv", "recent_0.csv", "recent_1.csv", "recent_2.csv"]
        assert keys_of([result]) == expected
        assert sorted(instance.get_dynamic_partitions(source_csvs.name)) == expected

    monkeypatch.setenv(RETENTION_DAYS_SETTING, "0")  # retention off: nothing is retired
    with dg.instance_for_test() as instance:
        (result,) = Daemon(instance, local_bucket.url, sqlite_engine).sweep()
        assert len(result.run_requests) == 7


def test_a_version_whose_run_is_queued_is_neither_probed_nor_requested_again(
    local_bucket, sqlite_engine, monkeypatch
):
    write(local_bucket, ["shop_2026-11-01T06-00-00.csv", "shop_2026-11-02T06-00-00.csv"])
    probes: list[str] = []
    real_probe = discovery.rejection_reason

    def probe(bucket, info):
        probes.append(info.key)
        return real_probe(bucket, info)

    monkeypatch.setattr(discovery, "rejection_reason", probe)
    with dg.instance_for_test() as instance:
        daemon = Daemon(instance, local_bucket.url, sqlite_engine)
        first = daemon.tick()
        (queued, _) = first.run_requests
        create_run_for_test(  # the daemon launched the first request only
            instance,
            job_name="catalog_ingest_job",
            status=dg.DagsterRunStatus.NOT_STARTED,
            tags={RUN_KEY_TAG: queued.run_key, SENSOR_NAME_TAG: SENSOR},
        )
        probes.clear()
        second = daemon.tick()
        assert keys_of([second]) == ["shop_2026-11-02T06-00-00.csv"]
        assert probes == ["shop_2026-11-02T06-00-00.csv"]


def test_a_transient_listing_error_skips_the_tick_or_keeps_what_it_found(
    local_bucket, sqlite_engine, monkeypatch
):
    monkeypatch.setenv("CATALOG_RETRY_BUDGET_S", "0")  # no retries: the error surfaces
    keys = [f"shop/scrape_{n:03d}.csv" for n in range(250)]
    write(local_bucket, keys)
    with dg.instance_for_test() as instance:
        daemon = Daemon(instance, local_bucket.url, sqlite_engine, page_size=100)
        FAIL_AFTER.append(0)  # the very first page fails: nothing done, the tick is skipped
        skipped = daemon.tick()
        assert skipped.skip_message.startswith("skipped this tick: ")
        assert "connection reset" in skipped.skip_message
        assert skipped.cursor is None and skipped.run_requests == []  # the cursor stays
        FAIL_AFTER.append(150)  # the second page fails: the first one's requests stand
        partial = daemon.tick()
        assert keys_of([partial]) == keys[:100] and after(partial.cursor) == keys[99]
        rest = daemon.sweep()
        assert keys_of(rest) == keys[100:]
        assert set(daemon.requested.values()) == {1}


def test_the_request_limit_bounds_a_tick_and_the_next_tick_goes_on(local_bucket, sqlite_engine):
    keys = [f"scrape_{n:03d}.csv" for n in range(120)]
    write(local_bucket, keys)
    with dg.instance_for_test() as instance:
        daemon = Daemon(instance, local_bucket.url, sqlite_engine, request_limit=50)
        ticks = daemon.sweep()
        assert [len(result.run_requests) for result in ticks] == [50, 50, 20]
        assert keys_of(ticks) == keys
        with sqlite_engine.connect() as connection:  # nothing was recorded for them
            assert connection.execute(select(source_files.c.id)).first() is None


def test_the_budget_setting_is_read_and_a_bad_one_is_named(monkeypatch):
    monkeypatch.setenv(discovery.LIST_BUDGET_SETTING, "7.5")
    assert "up to 7.5 s a tick" in build_new_csv_objects_sensor().description
    for bad in ("0", "-3", "soon"):
        monkeypatch.setenv(discovery.LIST_BUDGET_SETTING, bad)
        with pytest.raises(ValueError, match=discovery.LIST_BUDGET_SETTING):
            build_new_csv_objects_sensor()
