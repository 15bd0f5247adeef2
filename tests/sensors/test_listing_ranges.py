"""The sensor's sweep of an S3 bucket in key ranges listed side by side: the pages reach
the comparison in key order, exactly as one listing would deliver them, whatever the
splits; a throttled range is ridden out; a range that keeps failing stops the call just
before it, and the next call resumes there without a key missed or handled twice.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog_pipeline import discovery
from catalog_pipeline.core.bucket import BucketError, LocalBucket, S3Bucket
from catalog_pipeline.core.retry import BUDGET_SETTING, RetryPolicy
from tests.fault_proxy import FaultProxy, Match
from tests.sensors.test_sensor_scale import BODY, record

KEYS = [f"shop{n % 4}/scrape_{n:04d}.csv" for n in range(240)]
RECORDED = KEYS[::5] + KEYS[1::5] + KEYS[2::5]  # three in five known to the catalog


@pytest.fixture(scope="module")
def filled(s3_server: str) -> str:
    """A bucket holding `KEYS` (and one object that is not a CSV); its name."""
    name = f"ranges-{uuid.uuid4().hex[:12]}"
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
def small_ranges(monkeypatch):
    """Ranges of 7 recorded versions (about 12 keys), splits read 4 at a time: a sweep of
    `KEYS` runs through many ranges and many split queries."""
    monkeypatch.setattr(discovery, "RANGE_VERSIONS", 7)
    monkeypatch.setattr(discovery, "SPLITS_PER_QUERY", 4)


def _sweep(bucket, engine, after: str = "", **options) -> discovery.Discovery:
    return discovery.discover(
        bucket, engine, after, budget_seconds=60, page_size=10, request_limit=10_000, **options
    )


def _start_afters(proxy: FaultProxy) -> set[str]:
    """The StartAfter of every listing request the proxy saw."""
    found = set()
    for method, target, _, _ in proxy.log:
        query = parse_qs(urlsplit(target).query)
        if method == "GET" and "list-type" in query:
            found.update(query.get("start-after", []))
    return found


def _observed(found: discovery.Discovery) -> tuple:
    return (
        [info.key for info in found.new],
        found.scanned,
        found.handled,
        found.seen,
        found.stopped_by,
        found.next_after,
    )


def test_ranges_listed_side_by_side_deliver_what_one_listing_does(
    filled, proxy, sqlite_engine, s3_server, small_ranges
):
    direct = S3Bucket(filled, "", endpoint_url=s3_server)
    record(sqlite_engine, [direct.head(key) for key in RECORDED])
    one_listing = _sweep(direct, sqlite_engine, concurrency=1)
    assert one_listing.scanned == len(KEYS) + 1 and one_listing.seen == len(RECORDED)

    bucket = S3Bucket(filled, "", endpoint_url=proxy.url)
    assert discovery.list_concurrency(bucket) == 4  # S3's default
    in_ranges = _sweep(bucket, sqlite_engine)
    assert _observed(in_ranges) == _observed(one_listing)
    # The ranges were listed from the catalog's keys, 7 recorded versions apart.
    splits = sorted(RECORDED)[6::7]
    assert _start_afters(proxy) >= set(splits) and len(splits) > 10

    # From the middle of the bucket, as the next tick of a sweep starts.
    middle = sorted(KEYS)[100]
    assert _observed(_sweep(bucket, sqlite_engine, middle)) == _observed(
        _sweep(direct, sqlite_engine, middle, concurrency=1)
    )


def test_a_throttled_range_is_ridden_out(filled, proxy, sqlite_engine, small_ranges):
    bucket = S3Bucket(filled, "", endpoint_url=proxy.url)
    record(sqlite_engine, [bucket.head(key) for key in RECORDED])
    expected = _observed(_sweep(bucket, sqlite_engine, concurrency=1))
    split = sorted(RECORDED)[6 * 7 - 1]  # the sixth range starts after it
    # S3Bucket makes one attempt per call: these are ridden out by the sweep's retries.
    proxy.inject("slowdown", count=2, match=Match(path=f"start-after={_quoted(split)}"))
    assert _observed(_sweep(bucket, sqlite_engine)) == expected
    assert proxy.counts["slowdown"] == 2


def test_a_range_that_keeps_failing_stops_the_call_before_it_and_the_next_resumes_there(
    filled, proxy, sqlite_engine, small_ranges, monkeypatch
):
    monkeypatch.setenv(BUDGET_SETTING, "0")  # no retries of our own: the error stands
    bucket = S3Bucket(filled, "", endpoint_url=proxy.url)
    record(sqlite_engine, [bucket.head(key) for key in RECORDED])
    split = sorted(RECORDED)[6 * 7 - 1]
    proxy.inject("internal_error", match=Match(path=f"start-after={_quoted(split)}"))

    first = _sweep(bucket, sqlite_engine)
    assert first.stopped_by == discovery.ERROR and "InternalError" in first.error
    # Everything up to the failing range is handled, nothing after it.
    assert first.next_after == split
    assert first.handled == sum(1 for key in [*KEYS, "shop2/notes.txt"] if key <= split)

    proxy.clear()
    second = _sweep(bucket, sqlite_engine, first.next_after)
    assert second.stopped_by == discovery.END
    found = [info.key for info in [*first.new, *second.new]]
    assert found == sorted(set(KEYS) - set(RECORDED))  # each once, in key order
    assert first.handled + second.handled == len(KEYS) + 1


def _quoted(key: str) -> str:
    """`key` as botocore puts it in a query string."""
    from urllib.parse import quote

    return quote(key, safe="-_.~")


# Splits as a database with another collation might give them: any keys, in any order,
# some of them before the range's start or not in the bucket at all.
names = st.text(alphabet="ab/._-Zé", min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(
    keys=st.sets(names, max_size=25),
    after=st.one_of(st.just(""), names),
    batches=st.lists(st.lists(names, max_size=5), max_size=6),
    concurrency=st.integers(1, 4),
)
def test_any_splits_cover_every_key_after_the_cursor_once_in_order(
    keys, after, batches, concurrency
):
    with tempfile.TemporaryDirectory() as folder:
        bucket = LocalBucket(Path(folder))
        for key in keys:
            try:
                bucket.put(f"k/{key}", b"x")
            except (OSError, BucketError):  # a key a folder cannot hold ("a/b" next to "a")
                continue
        listed = list(bucket.list_objects(start_after=after or None))
        queue = list(batches)

        def splits(low: str) -> list[str]:
            return [f"k/{name}" for name in queue.pop(0)] if queue else []

        ranges = list(discovery.key_ranges(after, splits, batch=5))
        assert ranges[-1][1] is None
        assert all(low < high for low, high in ranges[:-1])
        listing = discovery._RangeListing(
            bucket, iter(ranges), RetryPolicy(budget_seconds=0), concurrency, page_size=3
        )
        delivered, exhausted = [], False
        try:
            while not exhausted:
                page, exhausted = listing.page(3)
                delivered.extend(page)
        finally:
            listing.close()
        assert [info.key for info in delivered] == [info.key for info in listed]


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
