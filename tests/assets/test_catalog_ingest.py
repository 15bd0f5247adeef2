"""The `catalog_ingest` multi-asset through real Dagster runs: backends, retries,
re-execution from failure, and an object overwritten mid-run."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import select, update

from catalog_pipeline.assets.partitions import partition_key_for, source_csvs
from catalog_pipeline.core.bucket import S3Bucket
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.engine import make_engine
from catalog_pipeline.db.tables import catalog_items, source_chunks, source_files
from catalog_pipeline.definitions import build_definitions
from catalog_pipeline.jobs import INGEST_JOB
from tests.dagster_jobs import FAULT_SETTING, execute_faulty_ingest, faulty_ingest_job, resources
from tests.helpers import content_dump, dump

KEY = "acme [eu], outdoor|1_2026-11-01T06-00-00.csv"  # characters Dagster mishandles
CHUNK_BYTES = 32 * 1024
DATA = sample_csv(300, seed=11)


def run_partition(res: dict, key: str, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions(source_csvs.name, [partition_key_for(key)])
    job = build_definitions(res).resolve_job_def(INGEST_JOB)
    return job.execute_in_process(
        partition_key=partition_key_for(key), instance=instance, raise_on_error=False
    )


def started_steps(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_START).records
    return sorted(record.event_log_entry.step_key for record in records)


def test_one_partition_gives_the_same_tables_on_postgres_s3_and_sqlite_local(
    tmp_path, local_bucket, s3_server, postgres_database, postgres_engine, sqlite_engine
):
    local_bucket.put(KEY, DATA)
    name = "same-tables"
    s3 = S3Bucket(name, "", endpoint_url=s3_server)
    s3.client.create_bucket(Bucket=name)
    s3.put(KEY, DATA)

    with dg.instance_for_test() as instance:
        local = run_partition(
            resources(local_bucket.url, str(sqlite_engine.url), CHUNK_BYTES), KEY, instance
        )
        remote = run_partition(
            resources(f"s3://{name}", postgres_database, CHUNK_BYTES, endpoint_url=s3_server),
            KEY,
            instance,
        )
    assert local.success and remote.success
    local_tables = content_dump(sqlite_engine)
    assert local_tables == content_dump(postgres_engine)
    assert len(local_tables["items"]) > 200 and local_tables["invalid"]

    (materialization,) = [
        m
        for m in local.asset_materializations_for_node("catalog_ingest")
        if m.asset_key == dg.AssetKey("catalog_items")
    ]
    metadata = {
        key: getattr(value, "value", value) for key, value in materialization.metadata.items()
    }
    assert metadata["rows"] == 300 == metadata["valid"] + metadata["invalid"]
    assert metadata["dagster/row_count"] == metadata["valid"]
    assert metadata["bytes"] == len(DATA)
    assert metadata["chunks"] == len(DATA) // CHUNK_BYTES + 1
    assert len(materialization.metadata["chunk_results"].value.records) == metadata["chunks"]
    assert metadata["object_key"] == KEY
    reasons = metadata["top_invalid_reasons"]
    assert sum(reasons.values()) >= metadata["invalid"] > 0  # every invalid row has a reason
    checks = {e.check_name: e.passed for e in local.get_asset_check_evaluations()}
    assert checks == {"rows_reconcile": True, "file_accepted": True}


def check_evaluations(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def check_metadata(evaluation: dg.AssetCheckEvaluation) -> dict:
    return {key: getattr(value, "value", value) for key, value in evaluation.metadata.items()}


def test_a_file_without_a_required_column_warns_through_file_accepted(engine, local_bucket):
    key = "legacy_2026-11-01T06-00-00.csv"
    local_bucket.put(key, b"sku,name,price\nL-1,Old thing,3.50\n")
    url = engine.url.render_as_string(hide_password=False)
    with dg.instance_for_test() as instance:
        result = run_partition(resources(local_bucket.url, url, CHUNK_BYTES), key, instance)
    assert result.success  # a rejected file is an outcome, not a failed run
    checks = check_evaluations(result)
    accepted = checks["file_accepted"]
    assert accepted.passed is False
    assert accepted.severity == dg.AssetCheckSeverity.WARN
    reason = check_metadata(accepted)["rejected_reason"]
    assert "'url'" in reason
    with engine.connect() as connection:
        stored = connection.execute(
            select(source_files.c.status, source_files.c.rejected_reason)
        ).one()
    assert tuple(stored) == ("rejected", reason)
    assert checks["rows_reconcile"].passed  # nothing planned, nothing counted


def test_rows_reconcile_fails_with_the_difference_when_stored_results_disagree_with_the_plan(
    fault_env, sqlite_engine
):
    """The check compares the planner's independent record count with the sum of the
    stored chunk results; a result changed after the run (here in SQL) shows up when
    `finalize` is re-executed."""
    with dg.instance_for_test() as instance:
        first = _execute(instance)
        assert first.success
        assert check_evaluations(first)["rows_reconcile"].passed
        with sqlite_engine.begin() as connection:
            changed = connection.execute(
                update(source_chunks)
                .where(source_chunks.c.chunk_index == 1)
                .values(valid=source_chunks.c.valid + 2)
            )
            assert changed.rowcount == 1
        again = dg.execute_job(
            dg.reconstructable(faulty_ingest_job),
            instance,
            reexecution_options=dg.ReexecutionOptions(
                first.run_id, step_selection=["catalog_ingest.finalize"]
            ),
            raise_on_error=False,
        )
        assert started_steps(instance, again.run_id) == ["catalog_ingest.finalize"]
        reconcile = check_evaluations(again)["rows_reconcile"]
    assert reconcile.passed is False
    assert reconcile.severity == dg.AssetCheckSeverity.ERROR
    metadata = check_metadata(reconcile)
    with sqlite_engine.connect() as connection:
        valid, invalid = connection.execute(
            select(source_files.c.rows_valid, source_files.c.rows_invalid)
        ).one()
    assert metadata == {
        "verified_row_count": 300,
        "rows_valid": valid,
        "rows_invalid": invalid,
        "difference": 2,
    }
    assert valid + invalid == 302


@pytest.fixture
def fault_env(monkeypatch, tmp_path, local_bucket, sqlite_engine):
    """Point `faulty_ingest_job` at a local bucket holding KEY and a fresh SQLite catalog."""
    local_bucket.put(KEY, DATA)
    monkeypatch.setenv("CATALOG_TEST_BUCKET_URL", local_bucket.url)
    monkeypatch.setenv("CATALOG_TEST_DATABASE_URL", str(sqlite_engine.url))
    monkeypatch.setenv("CATALOG_TEST_CHUNK_BYTES", str(CHUNK_BYTES))

    def set_fault(**fault):
        fault.setdefault("markers", str(tmp_path / f"markers-{len(fault)}-{id(fault)}"))
        monkeypatch.setenv(FAULT_SETTING, json.dumps(fault))
        return fault

    return set_fault


def error_text(error) -> str:
    """A step failure's message with its causes, as the UI shows them."""
    parts = []
    while error is not None:
        parts.append(error.message)
        error = error.cause
    return "\n".join(parts)


def _chunk_start(engine, index: int) -> int:
    with engine.connect() as connection:
        return connection.execute(
            select(source_chunks.c.byte_start).where(source_chunks.c.chunk_index == index)
        ).scalar_one()


def _clean_tables(tmp_path, local_bucket) -> dict:
    engine = make_engine(f"sqlite:///{tmp_path / 'clean.sqlite'}")
    with dg.instance_for_test() as instance:
        assert run_partition(
            resources(local_bucket.url, str(engine.url), CHUNK_BYTES), KEY, instance
        ).success
    return content_dump(engine)


def _plan(engine_url: str, local_bucket) -> None:
    """Plan KEY once so the test can aim a fault at a real chunk's first byte."""
    from catalog_pipeline.ingest import plan_object

    plan_object(local_bucket, make_engine(engine_url), KEY, CHUNK_BYTES)


def test_a_chunk_whose_read_fails_transiently_is_retried_in_its_step_and_counted_once(
    tmp_path, fault_env, sqlite_engine, local_bucket
):
    _plan(str(sqlite_engine.url), local_bucket)
    fault = fault_env(start=_chunk_start(sqlite_engine, 2), failures=2)
    with dg.instance_for_test() as instance:
        result = _execute(instance)
        assert result.success
        # Retried inside the step (no new step process, no re-read of the other chunks).
        assert not [
            e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
        ]
    assert len(list(Path(fault["markers"]).iterdir())) == 3  # two failures, then the read
    with sqlite_engine.connect() as connection:
        attempts = dict(
            connection.execute(select(source_chunks.c.chunk_index, source_chunks.c.attempts)).all()
        )
    assert all(n == 1 for n in attempts.values())
    assert content_dump(sqlite_engine) == _clean_tables(tmp_path, local_bucket)


def _execute(instance: dg.DagsterInstance, reexecution_of: str | None = None):
    return execute_faulty_ingest(instance, KEY, reexecution_of=reexecution_of)


def test_reexecution_from_failure_reruns_only_the_failed_chunk(
    tmp_path, fault_env, sqlite_engine, local_bucket, monkeypatch
):
    monkeypatch.setenv("CATALOG_RETRY_BUDGET_S", "1.5")
    _plan(str(sqlite_engine.url), local_bucket)
    fault_env(start=_chunk_start(sqlite_engine, 3), failures=100)
    with dg.instance_for_test() as instance:
        failed = _execute(instance)
        assert not failed.success
        failure = next(e for e in failed.all_events if e.is_step_failure)
        assert failure.step_key == "catalog_ingest.process_chunk[chunk_00003]"
        message = error_text(failure.step_failure_data.error)
        assert "(transient; still failing after" in message and "the retry budget" in message
        assert (
            KEY in message and "chunk 3 at byte" in message and "injected read failure" in message
        )

        fault_env()  # the bucket recovers
        again = _execute(instance, reexecution_of=failed.run_id)
        assert again.success
        assert started_steps(instance, again.run_id) == [
            "catalog_ingest.finalize",
            "catalog_ingest.process_chunk[chunk_00003]",
        ]
    assert content_dump(sqlite_engine) == _clean_tables(tmp_path, local_bucket)
    before = dump(sqlite_engine)
    with dg.instance_for_test() as instance:
        assert _execute(instance).success
    assert dump(sqlite_engine) == before  # and a full re-run changes nothing


def test_object_overwritten_mid_run_fails_clearly_then_next_run_supersedes(
    tmp_path, fault_env, sqlite_engine, local_bucket
):
    _plan(str(sqlite_engine.url), local_bucket)
    new_version = sample_csv(50, seed=99, sku_prefix="NEW").decode()
    fault_env(start=_chunk_start(sqlite_engine, 1), overwrite_with=new_version)
    with dg.instance_for_test() as instance:
        result = _execute(instance)
        assert not result.success
        failures = [e for e in result.all_events if e.is_step_failure]
        # Chunk 0 was read before the overwrite; chunk 1 and every later one fail, each
        # with the same clear message, and none is retried (retrying cannot help).
        assert failures[0].step_key == "catalog_ingest.process_chunk[chunk_00001]"
        assert "catalog_ingest.process_chunk[chunk_00000]" not in {e.step_key for e in failures}
        for failure in failures:
            message = error_text(failure.step_failure_data.error)
            assert f"{KEY}: the object changed since it was planned" in message
        assert not [
            e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
        ]

        fault_env()
        assert _execute(instance).success
    with sqlite_engine.connect() as connection:
        versions = connection.execute(
            select(source_files.c.id, source_files.c.status, source_files.c.superseded_by).order_by(
                source_files.c.id
            )
        ).all()
        new_skus = connection.execute(
            select(catalog_items.c.sku).where(catalog_items.c.sku.like("NEW-%"))
        ).all()
    (old, new) = versions
    assert old.status == "superseded" and old.superseded_by == new.id
    assert new.status == "completed"
    assert len(new_skus) > 40


def test_a_partition_whose_object_was_deleted_fails_planning_with_the_key(
    local_bucket, s3_bucket, s3_server, sqlite_engine
):
    for bucket_url, endpoint in ((local_bucket.url, None), (s3_bucket.url, s3_server)):
        with dg.instance_for_test() as instance:
            result = run_partition(
                resources(bucket_url, str(sqlite_engine.url), CHUNK_BYTES, endpoint), KEY, instance
            )
        assert not result.success
        (failure,) = [e for e in result.all_events if e.is_step_failure]
        assert failure.step_key == "catalog_ingest.plan_chunks"
        message = error_text(failure.step_failure_data.error)
        assert f"{KEY}: no such object in {bucket_url} (deleted?)" in message


def test_each_check_evaluation_belongs_to_its_partition(local_bucket, sqlite_engine):
    # The Checks tab shows an evaluation as current only when it targets the latest
    # materialization of its own partition; with unpartitioned checks, runs finishing out
    # of order (the sensor's, concurrent) read "Not evaluated".
    first, second = "shop-a_2026-11-01T06-00-00.csv", "shop-b_2026-11-01T06-00-00.csv"
    local_bucket.put(first, DATA)
    local_bucket.put(second, sample_csv(50, seed=12))
    res = resources(local_bucket.url, str(sqlite_engine.url), CHUNK_BYTES)
    with dg.instance_for_test() as instance:
        runs = {key: run_partition(res, key, instance).run_id for key in (first, second)}
        for name in ("rows_reconcile", "file_accepted"):
            history = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(dg.AssetKey("catalog_items"), name), limit=10
            )
            assert {(record.partition, record.run_id) for record in history} == {
                (partition_key_for(key), run_id) for key, run_id in runs.items()
            }
            assert {record.status.value for record in history} == {"SUCCEEDED"}


def test_chunk_steps_log_each_phase_in_the_run_log(local_bucket, sqlite_engine):
    local_bucket.put(KEY, DATA)
    res = resources(local_bucket.url, str(sqlite_engine.url), CHUNK_BYTES)
    with dg.instance_for_test() as instance:
        run_id = run_partition(res, KEY, instance).run_id
        messages = [entry.user_message for entry in instance.all_logs(run_id)]
    chunks = len(DATA) // CHUNK_BYTES  # at least this many chunks
    for phase in ("read", "validated"):
        logged = [m for m in messages if m.startswith("chunk ") and f": {phase} " in m]
        assert len(logged) >= chunks, (phase, messages[:20])
