"""`catalog-pipeline repair KEY` as a user runs it: a subprocess against a local bucket and a
real database. A repair re-ingests the version that was ingested (an unchanged completed
file stays as it is, a failed one completes), is refused when the object changed since,
unless forced, and every attempt is a `repair_history` row."""

from __future__ import annotations

import json

from sqlalchemy import Engine, text

from catalog_pipeline.core.bucket import LocalBucket
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.repair import repairs_of
from catalog_pipeline.db.tables import ingest_leases
from tests.helpers import content_dump, dump, hold_ingest_lease, lose_chunk
from tests.test_cli import cli

KEY = "shop_2026-11-01T06-00-00.csv"
CHUNK_BYTES = 32 * 1024
OPERATOR = "ops-oncall"
REPAIR_KEYS = {
    "object_key",
    "status",
    "rows_total",
    "rows_valid",
    "rows_invalid",
    "rejected_reason",
    "forced",
    "ingested_etag",
    "current_etag",
    "run_id",
}


def run(command: str, bucket: LocalBucket, database_url: str, *extra: str):
    result = cli(
        command,
        *extra,
        "--bucket",
        bucket.url,
        "--database-url",
        database_url,
        "--chunk-bytes",
        str(CHUNK_BYTES),
        env={"DAGSTER_HOME": "", "CATALOG_REQUESTED_BY": OPERATOR},
    )
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def last_json(result) -> dict:
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-3000:]
    return json.loads(lines[-1])


def catalog(engine: Engine) -> dict[str, list[tuple]]:
    """Every catalog table minus run bookkeeping and the repair's own history."""
    tables = dump(engine)
    del tables["repair_history"]
    return tables


def files(engine: Engine) -> list[tuple]:
    with engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(
                text("SELECT id, etag, status, superseded_by FROM source_files ORDER BY id")
            )
        ]


def test_repairing_a_completed_file_changes_nothing_but_bookkeeping(tmp_path, sqlite_engine):
    bucket = LocalBucket(tmp_path / "bucket")
    etag = bucket.put(KEY, sample_csv(120, seed=5)).etag
    url = str(sqlite_engine.url)
    ingested = run("ingest", bucket, url, "--json")
    assert ingested.returncode == 0, ingested.stderr
    (file,) = last_json(ingested)["files"]
    before = catalog(sqlite_engine)

    repaired = run("repair", bucket, url, KEY, "--json")
    assert repaired.returncode == 0, repaired.stderr
    result = last_json(repaired)["repair"]
    assert set(result) == REPAIR_KEYS
    assert result["status"] == "completed"
    assert {name: result[name] for name in ("rows_total", "rows_valid", "rows_invalid")} == {
        name: file[name] for name in ("rows_total", "rows_valid", "rows_invalid")
    }
    assert result["ingested_etag"] == result["current_etag"] == etag
    assert result["forced"] is False and result["rejected_reason"] is None
    assert catalog(sqlite_engine) == before

    again = run("repair", bucket, url, KEY)  # the human summary
    assert again.returncode == 0, again.stderr
    assert f"repair {KEY}: completed, 120 rows" in again.stdout
    assert "unchanged since its last ingest" in again.stdout
    assert catalog(sqlite_engine) == before

    (file_id, _, _, _), *_ = files(sqlite_engine)
    history = repairs_of(sqlite_engine, KEY)
    assert [(r.outcome, r.source_file_id, r.forced) for r in history] == [
        ("completed", file_id, False),
        ("completed", file_id, False),
    ]
    assert history[0].run_id == result["run_id"] and history[1].run_id != result["run_id"]
    assert {(r.ingested_etag, r.current_etag, r.requested_by) for r in history} == {
        (etag, etag, OPERATOR)
    }


def test_an_object_changed_since_its_ingest_is_repaired_only_when_forced(
    tmp_path, postgres_database, postgres_engine
):
    bucket = LocalBucket(tmp_path / "bucket")
    old_etag = bucket.put(KEY, sample_csv(120, seed=5)).etag
    assert run("ingest", bucket, postgres_database).returncode == 0
    new_etag = bucket.put(KEY, sample_csv(80, seed=6, sku_prefix="NEW")).etag
    assert new_etag != old_etag
    before = catalog(postgres_engine)
    ((old_id, _, _, _),) = files(postgres_engine)

    refused = run("repair", bucket, postgres_database, KEY)
    assert refused.returncode == 2
    assert old_etag in refused.stderr and new_etag in refused.stderr
    assert "--force" in refused.stderr and "changed since it was ingested" in refused.stderr
    assert catalog(postgres_engine) == before
    (history,) = repairs_of(postgres_engine, KEY)
    assert history.outcome.startswith("refused: the object changed since it was ingested")
    assert (history.source_file_id, history.ingested_etag, history.current_etag) == (
        old_id,
        old_etag,
        new_etag,
    )
    assert history.forced is False and history.run_id is None

    forced = run("repair", bucket, postgres_database, KEY, "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    result = last_json(forced)["repair"]
    assert result["status"] == "completed" and result["rows_total"] == 80
    assert (result["forced"], result["ingested_etag"], result["current_etag"]) == (
        True,
        old_etag,
        new_etag,
    )
    (_, (new_id, _, _, _)) = rows = files(postgres_engine)
    assert rows == [(old_id, old_etag, "superseded", new_id), (new_id, new_etag, "completed", None)]
    with postgres_engine.connect() as connection:
        new_items = connection.execute(
            text("SELECT count(*) FROM catalog_items WHERE source_file_id = :id"), {"id": new_id}
        ).scalar_one()
    assert new_items > 0
    _, latest = repairs_of(postgres_engine, KEY)
    assert (latest.outcome, latest.forced, latest.source_file_id, latest.run_id) == (
        "completed",
        True,
        new_id,
        result["run_id"],
    )


def test_a_file_that_failed_mid_ingest_is_repaired_to_completed(tmp_path, sqlite_engine):
    bucket = LocalBucket(tmp_path / "bucket")
    bucket.put(KEY, sample_csv(120, seed=5))
    url = str(sqlite_engine.url)
    assert run("ingest", bucket, url).returncode == 0
    reference = content_dump(sqlite_engine)
    # What a run killed while writing chunk 1 leaves: the chunk and the file `failed`, the
    # chunk's items, provenance and invalid rows not written.
    file_id = lose_chunk(sqlite_engine, 1)
    assert content_dump(sqlite_engine) != reference

    repaired = run("repair", bucket, url, KEY, "--json")
    assert repaired.returncode == 0, repaired.stderr
    result = last_json(repaired)["repair"]
    assert result["status"] == "completed" and result["rows_total"] == 120
    assert result["ingested_etag"] == result["current_etag"]
    assert content_dump(sqlite_engine) == reference
    assert [status for _, _, status, _ in files(sqlite_engine)] == ["completed"]
    (history,) = repairs_of(sqlite_engine, KEY)
    assert (history.outcome, history.source_file_id) == ("completed", file_id)


def test_a_repair_that_fails_exits_1_and_a_later_one_completes(tmp_path, sqlite_engine):
    bucket = LocalBucket(tmp_path / "bucket")
    etag = bucket.put(KEY, sample_csv(60, seed=8)).etag
    url = str(sqlite_engine.url)
    hold_ingest_lease(sqlite_engine, KEY)  # every run of it fails at once
    ingested = run("ingest", bucket, url, "--json")
    assert ingested.returncode == 1
    assert [file["status"] for file in last_json(ingested)["files"]] == ["failed"]

    failed = run("repair", bucket, url, KEY, "--json")
    assert failed.returncode == 1
    result = last_json(failed)["repair"]
    assert result["status"] == "failed" and "already being ingested" in result["rejected_reason"]
    assert result["ingested_etag"] == result["current_etag"] == etag
    assert "the repair of" in failed.stderr and "failed" in failed.stderr

    with sqlite_engine.begin() as connection:
        connection.execute(ingest_leases.delete())
    repaired = run("repair", bucket, url, KEY)
    assert repaired.returncode == 0, repaired.stderr
    assert f"repair {KEY}: completed, 60 rows" in repaired.stdout
    first, second = repairs_of(sqlite_engine, KEY)
    assert first.outcome.startswith("failed: ") and "already being ingested" in first.outcome
    assert first.run_id == result["run_id"]
    assert second.outcome == "completed" and second.source_file_id == first.source_file_id


def test_unknown_and_new_keys(tmp_path, sqlite_engine):
    bucket = LocalBucket(tmp_path / "bucket")
    bucket.put(KEY, sample_csv(30, seed=9))
    url = str(sqlite_engine.url)

    missing = run("repair", bucket, url, "no-such-scrape.csv")
    assert missing.returncode == 2
    assert "cannot repair no-such-scrape.csv: there is no such object in" in missing.stderr
    assert missing.stdout == ""
    missing_json = last_json(run("repair", bucket, url, "no-such-scrape.csv", "--json"))
    assert missing_json["repair"]["status"] == "refused" and missing_json["error"]
    assert [r.outcome for r in repairs_of(sqlite_engine, "no-such-scrape.csv")] == [
        f"refused: no such object in {bucket.url}"
    ] * 2
    assert files(sqlite_engine) == []

    # A key that was never ingested: the repair is its first ingest.
    new = run("repair", bucket, url, KEY, "--json")
    assert new.returncode == 0, new.stderr
    result = last_json(new)["repair"]
    assert result["status"] == "completed" and result["ingested_etag"] is None
    (history,) = repairs_of(sqlite_engine, KEY)
    assert history.outcome == "completed" and history.ingested_etag is None
