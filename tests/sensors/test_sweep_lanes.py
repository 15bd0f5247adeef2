"""The sensor's sweep of an S3 bucket in lanes listed side by side: the lanes find what
one listing finds, each key once, across calls that stop anywhere; a throttled lane is
ridden out; a lane that keeps failing stops the call, and the next call resumes it
without a key missed or handled twice; any cuts cover every key exactly once.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import dagster as dg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog_pipeline import discovery
from catalog_pipeline.core.bucket import BucketError, LocalBucket, S3Bucket
from catalog_pipeline.core.retry import BUDGET_SETTING, RetryPolicy
from catalog_pipeline.sensors.objects import SweepCursor
from tests.fault_proxy import FaultProxy, Match
from tests.sensors.test_sensor_scale import BODY, Daemon, keys_of, record

KEYS = [f"shop{n % 4}/scrape_{n:04d}.csv" for n in range(240)]
RECORDED = KEYS[::5] + KEYS[1::5] + KEYS[2::5]  # three in five known to the catalog
UNRECORDED = sorted(set(KEYS) - set(RECORDED))
LISTED = len(KEYS) + 1  # and one object that is not a CSV
# 144 recorded versions in 4 lanes: cut after every 36th recorded key.
CUTS = sorted(RECORDED)[35::36][:3]


@pytest.fixture(scope="module")
def filled(s3_server: str) -> str:
    """A bucket holding `KEYS` and one object that is not a CSV; its name."""
    name = f"lanes-{uuid.uuid4().hex[:12]}"
    bucket = S3Bucket(name, "", endpoint_url=s3_server)
    bucket.client.create_bucket(Bucket=name)
    for key in [*KEYS, "shop2/notes.txt"]:
        bucket.put(key, BODY)
    return name


@pytest.fixture
def proxy(s3_server: str):
    with FaultProxy(s3_server) as proxy:
        yield proxy


@pytest.fixture
def recorded(filled, s3_server, sqlite_engine, monkeypatch):
    """`RECORDED` in the catalog; lanes formed from 10 recorded versions a lane."""
    monkeypatch.setattr(discovery, "MIN_LANE_VERSIONS", 10)
    direct = S3Bucket(filled, "", endpoint_url=s3_server)
    record(sqlite_engine, [direct.head(key) for key in RECORDED])
    return direct


def _call(bucket, engine, found: discovery.Discovery | None = None, **options):
    """A call that goes on where `found` stopped (a new sweep without it)."""
    options = {"budget_seconds": 60, "page_size": 10, "request_limit": 10_000, **options}
    if found is None:
        return discovery.discover(bucket, engine, "", **options)
    return discovery.discover(bucket, engine, "", lanes=found.lanes, **options)


def _lane_starts(proxy: FaultProxy) -> set[str]:
    """The StartAfter of every listing request the proxy saw (a lane's first request)."""
    found = set()
    for method, target, _, _ in proxy.log:
        query = parse_qs(urlsplit(target).query)
        if method == "GET" and "list-type" in query:
            found.update(query.get("start-after", []))
    return found


def _starting_after(key: str) -> Match:
    return Match(path=f"start-after={quote(key, safe='-_.~')}")


def test_lanes_side_by_side_find_what_one_listing_does(recorded, filled, proxy, sqlite_engine):
    one = _call(recorded, sqlite_engine, concurrency=1)
    assert one.complete and (one.scanned, one.seen) == (LISTED, len(RECORDED))
    assert [info.key for info in one.new] == UNRECORDED

    bucket = S3Bucket(filled, "", endpoint_url=proxy.url)
    assert discovery.list_concurrency(bucket) == 4  # S3's default
    lanes = _call(bucket, sqlite_engine)
    assert lanes.complete and (lanes.scanned, lanes.seen, lanes.handled) == (
        LISTED,
        len(RECORDED),
        LISTED,
    )
    assert sorted(info.key for info in lanes.new) == UNRECORDED
    assert _lane_starts(proxy) == set(CUTS)  # lanes cut at the catalog's keys


def test_calls_that_stop_anywhere_find_every_key_once(recorded, filled, sqlite_engine):
    """Calls stopped by the request limit, each resuming the lanes the last one left."""
    found, calls, new = None, 0, []
    while found is None or not found.complete:
        found = _call(recorded, sqlite_engine, found, request_limit=7)
        calls += 1
        new += [info.key for info in found.new]
        if not found.complete:
            assert found.stopped_by == discovery.REQUESTS
            cursor = SweepCursor.parse(SweepCursor.resume(found, 0.0, 0).dumps())
            assert list(cursor.lanes or [(cursor.after, None)]) == found.lanes  # kept
    assert sorted(new) == UNRECORDED and len(new) == len(set(new))
    assert calls >= len(UNRECORDED) // 7


def test_a_throttled_lane_is_ridden_out(recorded, filled, proxy, sqlite_engine):
    bucket = S3Bucket(filled, "", endpoint_url=proxy.url)
    # S3Bucket makes one attempt per call: the sweep's own retries ride these out.
    proxy.inject("slowdown", count=2, match=_starting_after(CUTS[1]))
    found = _call(bucket, sqlite_engine)
    assert proxy.counts["slowdown"] == 2
    assert found.complete and sorted(info.key for info in found.new) == UNRECORDED


def test_a_lane_that_keeps_failing_stops_the_call_and_the_next_resumes_it(
    recorded, filled, s3_server, sqlite_engine, monkeypatch
):
    monkeypatch.setenv(BUDGET_SETTING, "0")  # no retries of our own: the error stands
    failing = _starting_after(CUTS[1])
    # The lane answers late (after the others were compared), and with an error.
    with FaultProxy(s3_server, latency=1.0, latency_match=failing) as proxy:
        bucket = S3Bucket(filled, "", endpoint_url=proxy.url)
        proxy.inject("internal_error", match=failing)
        first = _call(bucket, sqlite_engine)
        assert first.stopped_by == discovery.ERROR and "InternalError" in first.error
        assert (CUTS[1], CUTS[2]) in first.lanes  # that lane goes on from its start
        in_failing_lane = [key for key in KEYS if CUTS[1] < key <= CUTS[2]]
        assert first.handled <= LISTED - len(in_failing_lane)
        proxy.clear()
        second = _call(bucket, sqlite_engine, first)
    assert second.complete and second.stopped_by == discovery.END
    found = [info.key for info in [*first.new, *second.new]]
    assert sorted(found) == UNRECORDED and len(found) == len(set(found))
    assert first.handled + second.handled == LISTED


def test_the_sensor_sweeps_in_lanes_across_ticks(recorded, filled, s3_server, sqlite_engine):
    """The daemon's ticks, each stopped by its request limit, the cursor carrying the
    lanes from one to the next: every new version requested once."""
    with dg.instance_for_test() as instance:
        daemon = Daemon(
            instance,
            f"s3://{filled}/",
            sqlite_engine,
            endpoint_url=s3_server,
            page_size=10,
            request_limit=10,
            prefetch=True,
        )
        ticks = daemon.sweep()
        # A fresh instance: the recorded versions have no partition yet, all are requested.
        assert len(ticks) >= len(KEYS) // 10
        assert any(len(SweepCursor.parse(tick.cursor).lanes) > 1 for tick in ticks)
        assert json.loads(ticks[-1].cursor)["after"] == ""
        assert keys_of(ticks) == sorted(KEYS)
        assert set(daemon.requested.values()) == {1}


# Cuts as a database with another collation might give them: any keys, in any order,
# some of them not in the bucket at all.
names = st.text(alphabet="ab/._-Zé", min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(
    keys=st.sets(names, max_size=25),
    cuts=st.lists(names, max_size=6),
    ahead=st.booleans(),
)
def test_any_cuts_make_lanes_that_cover_every_key_once(keys, cuts, ahead):
    with tempfile.TemporaryDirectory() as folder:
        bucket = LocalBucket(Path(folder))
        for key in keys:
            try:
                bucket.put(f"k/{key}", b"x")
            except (OSError, BucketError):  # a key a folder cannot hold ("a/b" next to "a")
                continue
        lanes = discovery.lanes_between(sorted({f"k/{cut}" for cut in cuts}))
        assert lanes[0][0] == "" and lanes[-1][1] is None
        listing = discovery._LaneListing(bucket, lanes, RetryPolicy(budget_seconds=0), 3, ahead)
        by_lane: list[list[str]] = [[] for _ in lanes]
        try:
            while (taken := listing.page(None)) is not None:
                lane, page = taken
                by_lane[lane] += [info.key for info in page]
        finally:
            listing.close()
        assert all(listing.finished)
        assert [key for keys in by_lane for key in keys] == [
            info.key for info in bucket.list_objects()
        ]


def test_the_concurrency_is_the_buckets_unless_set(monkeypatch, local_bucket, s3_bucket):
    monkeypatch.delenv(discovery.LIST_CONCURRENCY_SETTING, raising=False)
    assert (discovery.list_concurrency(local_bucket), discovery.list_concurrency(s3_bucket)) == (
        1,
        4,
    )
    monkeypatch.setenv(discovery.LIST_CONCURRENCY_SETTING, "8")
    assert discovery.list_concurrency(local_bucket) == 8
    for value, message in (("many", "give a whole number"), ("0", "give 1 to 32"), ("33", "1 to")):
        monkeypatch.setenv(discovery.LIST_CONCURRENCY_SETTING, value)
        with pytest.raises(ValueError, match=f"CATALOG_SENSOR_LIST_CONCURRENCY='{value}': "):
            discovery.list_concurrency(s3_bucket)
        with pytest.raises(ValueError, match=message):
            discovery.list_concurrency(s3_bucket)


@pytest.mark.parametrize("ahead", [True, False])
def test_a_page_the_catalog_could_not_compare_goes_to_the_next_call(
    local_bucket, sqlite_engine, monkeypatch, ahead
):
    """The lane's last page fails in the comparison (the instance's lookup, past its
    retries): the lane is not finished, and the next call compares that page."""
    monkeypatch.setenv(BUDGET_SETTING, "0")  # no retries of our own: the error stands
    keys = [f"shop/scrape_{n:02d}.csv" for n in range(15)]
    for key in keys:
        local_bucket.put(key, BODY)
    asked: list[int] = []

    def run_requested(infos):
        asked.append(len(infos))
        if len(asked) == 2:  # the second page, the lane's last
            raise ConnectionResetError("connection reset by peer")
        return set()

    options = {"page_size": 10, "budget_seconds": 60, "concurrency": 1, "prefetch": ahead}
    found = discovery.discover(
        local_bucket, sqlite_engine, "", run_requested=run_requested, **options
    )
    assert found.stopped_by == discovery.ERROR and found.handled == 10
    assert found.lanes == [(keys[9], None)] and not found.complete
    rest = discovery.discover(
        local_bucket, sqlite_engine, "", lanes=found.lanes, run_requested=run_requested, **options
    )
    assert rest.complete and asked == [10, 5, 5]
    assert [info.key for info in found.new + rest.new] == keys
