"""The ingest against a real S3 API (moto) that throttles, fails, drops connections and cuts
bodies short, through `tests.fault_proxy`: transient faults are ridden out without a
doubled row, a fault that outlasts the retry budget fails the chunk with a reason, and a
changed object fails at once.

boto3 retries by itself (standard mode: 3 attempts per call, never a body cut short), so
the windows here hold for more consecutive requests than it absorbs, and each test checks
that our own retry layer (`core.retry`) logged retries: without it they fail.
"""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from sqlalchemy import Engine, func, select, text

from catalog_pipeline.core.bucket import S3Bucket
from catalog_pipeline.core.errors import ChunkError, ObjectChangedError, is_transient, root_cause
from catalog_pipeline.core.retry import BUDGET_SETTING
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.engine import make_engine, upgrade
from catalog_pipeline.db.tables import source_chunks
from catalog_pipeline.discovery import discover
from catalog_pipeline.ingest import ingest_chunk, ingest_object, plan_object
from tests.fault_proxy import LISTINGS, RANGED_GETS, FaultProxy, Match
from tests.helpers import content_dump

KEY = "acme-outdoor_2026-11-01T06-00-00.csv"
DATA = sample_csv(1000, seed=23)
CHUNK_BYTES = 64 * 1024
BOTOCORE_ATTEMPTS = 3  # boto3's default (standard mode) per call; it never retries a body read
SUMMARY_FIELDS = (
    "status",
    "rows_total",
    "rows_valid",
    "rows_invalid",
    "verified_row_count",
    "chunks_total",
    "chunks_completed",
)


def _new_bucket(s3_server: str, endpoint_url: str | None = None) -> S3Bucket:
    """A bucket of this test's own holding `DATA` at `KEY`, reached at `endpoint_url`."""
    name = f"faults-{uuid.uuid4().hex[:12]}"
    direct = S3Bucket(name, "", endpoint_url=s3_server)
    direct.client.create_bucket(Bucket=name)
    direct.put(KEY, DATA)
    return S3Bucket(name, "", endpoint_url=endpoint_url or s3_server)


def _summary(summary) -> dict:
    return {field: getattr(summary, field) for field in SUMMARY_FIELDS}


@pytest.fixture(scope="module")
def fault_free(s3_server: str, tmp_path_factory) -> tuple[dict, dict]:
    """The summary and catalog contents of `DATA` ingested with no proxy, no fault."""
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('fault_free') / 'catalog.sqlite'}")
    upgrade(engine)
    summary, _ = ingest_object(_new_bucket(s3_server), engine, KEY, CHUNK_BYTES)
    tables = content_dump(engine)
    engine.dispose()
    assert summary.status == "completed" and summary.chunks_total >= 5
    return _summary(summary), tables


@pytest.fixture
def proxy(s3_server: str):
    with FaultProxy(s3_server) as running:
        yield running


@pytest.fixture
def retries_logged(caplog):
    """How many retries `core.retry` logged whose subject contains a given text."""
    caplog.set_level(logging.WARNING, logger="catalog_pipeline.retry")

    def count(subject: str) -> int:
        return sum(
            1
            for record in caplog.records
            if record.name == "catalog_pipeline.retry"
            and "transient failure" in record.getMessage()
            and subject in record.getMessage()
        )

    return count


def _assert_nothing_doubled(engine: Engine, records: int) -> None:
    with engine.connect() as connection:
        items, skus = connection.execute(
            text("SELECT count(*), count(DISTINCT sku) FROM catalog_items")
        ).one()
        provenance = connection.execute(text("SELECT count(*) FROM catalog_item_sources")).scalar()
        invalid = connection.execute(text("SELECT count(*) FROM invalid_item_logs")).scalar()
        valid_rows, invalid_rows, rows = connection.execute(
            select(
                func.sum(source_chunks.c.valid),
                func.sum(source_chunks.c.invalid),
                func.sum(source_chunks.c.rows),
            )
        ).one()
    assert items == skus == provenance > 0
    assert invalid == invalid_rows > 0
    assert rows == valid_rows + invalid_rows == records


@pytest.mark.parametrize(
    ("kind", "faults"),
    [
        # More than boto3's own default retries would absorb (3 attempts a call).
        ("slowdown", BOTOCORE_ATTEMPTS + 1),
        ("internal_error", BOTOCORE_ATTEMPTS + 1),
        ("drop", BOTOCORE_ATTEMPTS + 1),
        ("truncate", 2),  # boto3 never retries a body cut short
    ],
)
def test_chunk_reads_ride_out_a_fault_window_boto3_alone_cannot(
    engine, s3_server, proxy, fault_free, retries_logged, kind, faults
):
    bucket = _new_bucket(s3_server, proxy.url)  # boto3 as `open_bucket` builds it
    proxy.inject(kind, count=faults, match=RANGED_GETS)

    summary, _ = ingest_object(bucket, engine, KEY, CHUNK_BYTES)

    assert proxy.counts[kind] == faults
    # boto3 makes one attempt a call (`S3Bucket`'s default): every retry is ours.
    assert retries_logged(": read") == faults
    expected_summary, expected_tables = fault_free
    assert _summary(summary) == expected_summary
    assert content_dump(engine) == expected_tables
    _assert_nothing_doubled(engine, expected_summary["rows_total"])


def test_our_retry_layer_alone_rides_out_a_throttling_window(
    sqlite_engine, s3_server, proxy, fault_free, retries_logged
):
    """A one-second SlowDown window over every request (HEAD, the planning read, the
    chunk reads) is ridden out by `core.retry` alone (boto3 makes one attempt a call)."""
    bucket = _new_bucket(s3_server, proxy.url)
    proxy.inject("slowdown", seconds=1)

    summary, _ = ingest_object(bucket, sqlite_engine, KEY, CHUNK_BYTES)

    assert proxy.counts["slowdown"] >= 2
    assert retries_logged(KEY) == proxy.counts["slowdown"]  # every fault was ours to retry
    assert (_summary(summary), content_dump(sqlite_engine)) == fault_free
    _assert_nothing_doubled(sqlite_engine, fault_free[0]["rows_total"])


def test_a_fault_window_longer_than_the_retry_budget_fails_the_chunk_then_a_rerun_completes(
    engine, s3_server, proxy, fault_free, monkeypatch
):
    monkeypatch.setenv(BUDGET_SETTING, "2")
    bucket = _new_bucket(s3_server, proxy.url)
    proxy.inject("slowdown", seconds=20, match=RANGED_GETS)

    started = time.monotonic()
    with pytest.raises(ChunkError) as caught:
        ingest_object(bucket, engine, KEY, CHUNK_BYTES)
    elapsed = time.monotonic() - started

    error = caught.value
    # Retried within the budget (the last wait would have passed it), not for the window.
    assert elapsed < 10
    assert (error.chunk_index, error.byte_offset) == (0, _chunk_start(engine, 0))
    reason = root_cause(error)
    assert reason.startswith(f"{KEY}: chunk 0 at byte {error.byte_offset}: ")
    assert "SlowDown" in reason
    assert "transient; still failing after" in reason and "the retry budget" in reason
    assert not is_transient(error)  # the step fails now instead of retrying again
    with engine.connect() as connection:
        status, stored_error = connection.execute(
            select(source_chunks.c.status, source_chunks.c.error).where(
                source_chunks.c.chunk_index == 0
            )
        ).one()
    assert (status, stored_error) == ("failed", str(error))

    proxy.clear()  # the window ends
    summary, _ = ingest_object(bucket, engine, KEY, CHUNK_BYTES)
    assert (_summary(summary), content_dump(engine)) == fault_free
    _assert_nothing_doubled(engine, fault_free[0]["rows_total"])


def _chunk_start(engine: Engine, index: int) -> int:
    with engine.connect() as connection:
        return connection.execute(
            select(source_chunks.c.byte_start).where(source_chunks.c.chunk_index == index)
        ).scalar_one()


def test_an_object_overwritten_after_planning_fails_its_chunk_read_at_once(
    sqlite_engine, s3_server, proxy
):
    bucket = _new_bucket(s3_server, proxy.url)
    planned = plan_object(bucket, sqlite_engine, KEY, CHUNK_BYTES)
    chunk = planned.chunks[1]
    # The new version is longer, so without the ETag pin the planned range would read.
    bucket.put(KEY, sample_csv(1500, seed=24))
    before = len(proxy.log)

    with pytest.raises(ObjectChangedError) as caught:
        ingest_chunk(bucket, sqlite_engine, planned, chunk)

    assert not is_transient(caught.value)
    assert "changed since it was planned" in str(caught.value) and "412" in str(caught.value)
    ranged = [entry for entry in proxy.log[before:] if entry[2]]
    assert len(ranged) == 1  # a permanent failure: no retry by boto3 or by us
    with sqlite_engine.connect() as connection:
        status, error = connection.execute(
            select(source_chunks.c.status, source_chunks.c.error).where(
                source_chunks.c.chunk_index == chunk.index
            )
        ).one()
    assert (status, error) == ("failed", str(caught.value))


@pytest.mark.parametrize(
    "window",
    [LISTINGS, RANGED_GETS],  # the listing itself, then the header probe of each new object
    ids=["listing", "header-probe"],
)
def test_discovery_rides_out_a_throttling_window_boto3_alone_cannot(
    sqlite_engine, s3_server, proxy, window
):
    bucket = _new_bucket(s3_server, proxy.url)
    proxy.inject("slowdown", count=BOTOCORE_ATTEMPTS + 1, match=window)

    found = discover(bucket, sqlite_engine, "", lambda info: False)

    assert proxy.counts["slowdown"] == BOTOCORE_ATTEMPTS + 1
    assert [info.key for info in found.new] == [KEY]
    assert not found.rejected and not found.skipped


@pytest.mark.slow  # about 12 s: two Dagster runs of twenty chunk steps
def test_a_dagster_run_on_the_deployed_bucket_resource_fails_only_the_failing_chunk(
    postgres_database, postgres_engine, s3_server, proxy, fault_free, monkeypatch, retries_logged
):
    """The job as deployed (the bucket resource's boto3 client, PostgreSQL): a chunk whose
    reads keep failing past the budget fails its own step with the reason, the other
    chunks complete, and once the bucket recovers the next run completes the file."""
    import dagster as dg

    from catalog_pipeline.assets.partitions import partition_key_for, source_csvs
    from catalog_pipeline.definitions import build_definitions
    from catalog_pipeline.jobs import INGEST_JOB
    from tests.dagster_jobs import resources

    monkeypatch.setenv(BUDGET_SETTING, "2")
    bucket = _new_bucket(s3_server)
    job = build_definitions(
        resources(f"s3://{bucket.bucket}", postgres_database, CHUNK_BYTES, proxy.url)
    ).resolve_job_def(INGEST_JOB)
    first_chunk = f"bytes={len(DATA.splitlines(keepends=True)[0])}-"  # after the header
    proxy.inject("internal_error", match=Match(method="GET", range=first_chunk))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_csvs.name, [partition_key_for(KEY)])

        def run() -> dg.ExecuteInProcessResult:
            return job.execute_in_process(
                partition_key=partition_key_for(KEY), instance=instance, raise_on_error=False
            )

        failed = run()
        assert not failed.success
        (failure,) = [event for event in failed.all_events if event.is_step_failure]
        assert failure.step_key == "catalog_ingest.process_chunk[chunk_00000]"
        message = failure.step_failure_data.error.message
        assert f"{KEY}: chunk 0 at byte" in message and "InternalError" in message
        assert "transient; still failing after" in message and "the retry budget" in message
        assert not [e for e in failed.all_events if e.event_type.value == "STEP_UP_FOR_RETRY"]
        # More faults than the resource's client absorbs in one call: our layer retried.
        # One request per attempt of ours: the resource's client makes one a call.
        assert proxy.counts["internal_error"] == retries_logged(": read") + 1
        with postgres_engine.connect() as connection:
            states = dict(
                connection.execute(
                    select(source_chunks.c.chunk_index, source_chunks.c.status)
                ).all()
            )
        assert states.pop(0) == "failed" and set(states.values()) == {"completed"}

        proxy.clear()  # the bucket recovers
        assert run().success
    assert content_dump(postgres_engine) == fault_free[1]
