"""`.csv.gz` and `.csv.zst` objects ingest exactly like `.csv`: the same status, counts,
invalid rows (byte offsets in the decompressed content) and catalog rows, through a hidden
staged decompressed copy that no listing offers and that is deleted once the file is done.
Real SQLite + local folder and PostgreSQL + S3 (moto), the sensor, the CLI and a repair."""

from __future__ import annotations

import gzip
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import zstandard
from sqlalchemy import Engine, select, text

from catalog_pipeline import discovery
from catalog_pipeline.assets.partitions import partition_key_for, source_csvs
from catalog_pipeline.cli import list_bucket
from catalog_pipeline.core.bucket import Bucket, LocalBucket, ObjectInfo
from catalog_pipeline.core.chunking import plan_chunks
from catalog_pipeline.core.compression import ESTIMATED_RATIO
from catalog_pipeline.core.errors import ChunkError
from catalog_pipeline.core.naming import hidden_file_reason, skip_reason, staged_key
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.engine import make_engine, upgrade
from catalog_pipeline.db.repair import repairs_of
from catalog_pipeline.db.tables import source_files
from catalog_pipeline.executor import IN_PROCESS, MULTIPROCESS, choose_execution
from catalog_pipeline.ingest import finalize, ingest_chunk, ingest_object, plan_object
from catalog_pipeline.resources.catalog import BucketResource, CatalogDatabase, IngestSettings
from catalog_pipeline.sensors.objects import OBJECT_KEY_TAG, build_new_csv_objects_sensor
from tests.dagster_jobs import FAULT_SETTING, execute_faulty_ingest, faulty_ingest_job
from tests.helpers import content_dump, dump, lose_chunk
from tests.test_cli import cli, json_output
from tests.test_repair import last_json
from tests.test_repair import run as run_cli

PLAIN = "shop_2026-01-01T06-00-00.csv"


def _row(*fields: bytes) -> bytes:
    return b",".join([*fields, *[b""] * (13 - len(fields))]) + b"\n"


# 100 KB: scraped rows with every validation failure, quoted newlines, then broken records
# (not UTF-8, CRLF, a blank line, an unclosed quote) and a good row after them.
DATA = (
    sample_csv(80, seed=11, invalid_rate=0.25)
    + _row(b"BAD-ENC", b"caf\xe9 latin-1", b"", b"", b"", b"1.00", b"USD", b"https://a.example/1")
    + _row(b"CRLF-1", b"Windows line", b"", b"", b"", b"2.00", b"USD", b"https://a.example/2")[:-1]
    + b"\r\n\n"
    + b'BAD-Q,"never closed,x\n'
    + _row(b"LAST-1", b"Last thing", b"", b"", b"", b"3.00", b"USD", b"https://a.example/3")
)
ROWS = 84
CHUNK_BYTES = 4096  # some 25 chunks


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def gzip_members(data: bytes) -> bytes:
    """`cat a.gz b.gz c.gz`: three members, cut mid-record."""
    cuts = [0, len(data) // 3 + 17, 2 * len(data) // 3 + 5, len(data)]
    return b"".join(gzipped(data[a:b]) for a, b in zip(cuts, cuts[1:], strict=False))


def zstd_frames(data: bytes) -> bytes:
    """As `zstd` writes it: streamed, with a checksum."""
    out = io.BytesIO()
    with zstandard.ZstdCompressor(write_checksum=True).stream_writer(out, closefd=False) as w:
        w.write(data)
    return out.getvalue()


TWINS = {
    "gzip": (".gz", gzipped),
    "gzip-members": (".gz", gzip_members),
    "zstd": (".zst", zstd_frames),
}


@dataclass
class Backend:
    """A bucket and a catalog database; `fresh()` is another, empty catalog on the same
    server (SQLite: a new file; PostgreSQL: the worker's database, emptied)."""

    bucket: Bucket
    engine: Engine
    tmp_path: Path
    count: int = 0

    @property
    def prefix(self) -> str:
        return getattr(self.bucket, "prefix", "")

    def fresh(self) -> Engine:
        self.count += 1
        if self.engine.dialect.name == "sqlite":
            self.engine = make_engine(f"sqlite:///{self.tmp_path / f'fresh-{self.count}.sqlite'}")
        else:
            with self.engine.begin() as connection:
                connection.execute(text("DROP SCHEMA public CASCADE"))
                connection.execute(text("CREATE SCHEMA public"))
        upgrade(self.engine)
        return self.engine

    def keys(self) -> set[str]:
        """Every object in the bucket, hidden ones too."""
        return {info.key for info in self.bucket.list_objects(include_hidden=True)}


@pytest.fixture(params=["sqlite+local", "postgres+s3"])
def backend(request, tmp_path) -> Backend:
    if request.param == "sqlite+local":
        bucket, engine = request.getfixturevalue("local_bucket"), "sqlite_engine"
    else:
        bucket, engine = request.getfixturevalue("s3_bucket"), "postgres_engine"
    return Backend(bucket, request.getfixturevalue(engine), tmp_path)


def outcome(engine: Engine, key: str, reasons: Counter, summary) -> dict:
    """What an ingest of `key` leaves, with the key spelt as the plain twin's."""
    with engine.connect() as connection:
        chunks = connection.execute(
            text(
                "SELECT chunk_index, byte_start, byte_end, status, rows, valid, invalid "
                "FROM source_chunks ORDER BY chunk_index"
            )
        ).all()
    tables = {
        name: [tuple(PLAIN if value == key else value for value in row) for row in rows]
        for name, rows in content_dump(engine).items()
    }
    counts = (summary.status, summary.rows_total, summary.rows_valid, summary.rows_invalid)
    return {
        "summary": (*counts, summary.verified_row_count, summary.rejected_reason),
        "reasons": dict(reasons),
        "chunks": [tuple(row) for row in chunks],
        **tables,
    }


@pytest.mark.parametrize("twin", sorted(TWINS))
def test_a_compressed_twin_ingests_exactly_like_the_plain_file(backend: Backend, twin: str):
    suffix, compress = TWINS[twin]
    plain_key = backend.prefix + PLAIN
    backend.bucket.put(plain_key, DATA)
    summary, reasons = ingest_object(backend.bucket, backend.engine, plain_key, CHUNK_BYTES)
    expected = outcome(backend.engine, plain_key, reasons, summary)
    assert summary.status == "completed" and summary.rows_invalid > 0 and len(reasons) > 2
    assert len(expected["chunks"]) > 10
    assert len(expected["invalid"]) == summary.rows_invalid  # each with its byte offset

    engine = backend.fresh()
    key = plain_key + suffix
    info = backend.bucket.put(key, compress(DATA))
    summary, reasons = ingest_object(backend.bucket, engine, key, CHUNK_BYTES)
    got = outcome(engine, key, reasons, summary)
    assert got == expected
    with engine.connect() as connection:
        size, etag = connection.execute(select(source_files.c.size, source_files.c.etag)).one()
    assert (size, etag) == (info.size, info.etag)  # the file row is the compressed object's
    # The staged copy is gone once the file completed: the bucket holds what it held.
    assert backend.keys() == {plain_key, key}

    before = dump(engine)
    again, _ = ingest_object(backend.bucket, engine, key, CHUNK_BYTES)
    assert again.status == "completed"
    assert dump(engine) == before  # idempotent
    assert backend.keys() == {plain_key, key}


def test_the_staged_copy_is_hidden_from_every_listing_until_the_file_completes(
    backend: Backend,
):
    key = backend.prefix + PLAIN + ".gz"
    info = backend.bucket.put(key, gzipped(DATA))
    planned = plan_object(backend.bucket, backend.engine, key, CHUNK_BYTES)
    staged = staged_key(key, info.etag)
    assert planned.info == info and planned.data is not None and planned.data.key == staged
    assert planned.data.size == len(DATA)  # the chunks are ranges of the decompressed bytes
    assert planned.chunks[-1].end == len(DATA)
    assert backend.bucket.head(staged).etag == planned.data.etag

    assert backend.keys() == {key, staged}
    assert [i.key for i in backend.bucket.list_objects()] == [key]
    reason = hidden_file_reason(staged)
    assert backend.bucket.hidden_reason(staged) == reason == skip_reason(staged)
    objects, skipped = list_bucket(backend.bucket)  # what `catalog-pipeline ingest` sees
    assert [i.key for i in objects] == [key]
    assert [(s.key, s.reason) for s in skipped] == [(staged, reason)]
    found = discovery.discover(backend.bucket, backend.engine, "", lambda _: False)
    assert [i.key for i in found.new] == [key]
    assert not found.rejected and not found.skipped

    for chunk in planned.chunks:
        ingest_chunk(backend.bucket, backend.engine, planned, chunk)
    assert backend.keys() == {key, staged}  # kept until the file is done
    summary = finalize(backend.engine, planned, [], backend.bucket)
    assert summary.status == "completed"
    assert backend.keys() == {key}


def test_a_deleted_staged_copy_fails_its_chunk_with_a_clear_reason(backend: Backend):
    key = backend.prefix + PLAIN + ".zst"
    backend.bucket.put(key, zstd_frames(DATA))
    planned = plan_object(backend.bucket, backend.engine, key, CHUNK_BYTES)
    backend.bucket.delete(planned.data.key)
    backend.bucket.delete(planned.data.key)  # idempotent
    with pytest.raises(ChunkError) as caught:
        ingest_chunk(backend.bucket, backend.engine, planned, planned.chunks[1])
    message = str(caught.value)
    assert message.startswith(f"{key}: chunk 1 at byte {planned.chunks[1].start}")
    assert f"its staged decompressed copy {planned.data.key} is gone or changed" in message
    assert "materialize the partition again" in message


def _broken_gzip_header() -> bytes:
    blob = bytearray(gzipped(DATA))
    blob[2] = 7  # not deflate
    return bytes(blob)


def _corrupt_zstd() -> bytes:
    blob = bytearray(zstd_frames(DATA))
    blob[len(blob) // 2 : len(blob) // 2 + 64] = b"\xa5" * 64
    return bytes(blob)


BROKEN = {
    "gzip-corrupt": (".gz", _broken_gzip_header, "near compressed byte 0: corrupt data"),
    "gzip-truncated": (".gz", lambda: gzipped(DATA)[:-9], "truncated"),
    "gzip-not-gzip": (".gz", lambda: DATA, "not a gzip member"),
    "zstd-corrupt": (".zst", _corrupt_zstd, "corrupt data"),
    "zstd-truncated": (".zst", lambda: zstd_frames(DATA)[:-100], "truncated"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_corrupt_or_truncated_stream_is_rejected_naming_the_key(
    case, local_bucket, sqlite_engine
):
    suffix, make, detail = BROKEN[case]
    key = PLAIN + suffix
    compression = "gzip" if suffix == ".gz" else "zstd"
    local_bucket.put(key, make())
    summary, _ = ingest_object(local_bucket, sqlite_engine, key, CHUNK_BYTES)
    assert summary.status == "rejected"
    reason = summary.rejected_reason
    assert reason.startswith(f"{key}: the {compression} stream is broken")
    assert "compressed byte" in reason and detail in reason
    assert {i.key for i in local_bucket.list_objects(include_hidden=True)} == {key}
    tables = content_dump(sqlite_engine)
    assert tables["items"] == [] and tables["invalid"] == []


def test_a_compressed_file_missing_a_required_column_is_rejected_and_stages_nothing(
    local_bucket, sqlite_engine
):
    key = PLAIN + ".zst"
    local_bucket.put(key, zstd_frames(b"sku,name,price\nA-1,Thing,3.50\n"))
    summary, _ = ingest_object(local_bucket, sqlite_engine, key, CHUNK_BYTES)
    assert summary.status == "rejected"
    assert "missing required column" in summary.rejected_reason
    assert "'url'" in summary.rejected_reason
    assert {i.key for i in local_bucket.list_objects(include_hidden=True)} == {key}


class FailingReads:
    """The real bucket, failing every read of the staged copy past its first chunk (a
    permanent error: the file fails at once)."""

    def __init__(self, inner: Bucket) -> None:
        self.inner = inner
        self.url = inner.url

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def read_range(self, info: ObjectInfo, start: int, end: int) -> bytes:
        if info.key.endswith(".staged.csv") and start > 2000:
            raise RuntimeError("disk on fire")
        return self.inner.read_range(info, start, end)


def test_a_failed_file_keeps_its_copy_until_a_newer_version_supersedes_it(
    local_bucket, sqlite_engine
):
    key = PLAIN + ".gz"
    old = local_bucket.put(key, gzipped(DATA))
    with pytest.raises(ChunkError, match="disk on fire"):
        ingest_object(FailingReads(local_bucket), sqlite_engine, key, CHUNK_BYTES)
    with sqlite_engine.connect() as connection:
        assert connection.execute(select(source_files.c.status)).scalar_one() == "failed"
    old_copy = staged_key(key, old.etag)
    assert {i.key for i in local_bucket.list_objects(include_hidden=True)} == {key, old_copy}

    new = local_bucket.put(key, gzipped(sample_csv(30, seed=12, sku_prefix="NEW")))
    assert new.etag != old.etag
    summary, _ = ingest_object(local_bucket, sqlite_engine, key, CHUNK_BYTES)
    assert summary.status == "completed" and summary.rows_total == 30
    assert {i.key for i in local_bucket.list_objects(include_hidden=True)} == {key}
    with sqlite_engine.connect() as connection:
        statuses = connection.execute(
            select(source_files.c.etag, source_files.c.status).order_by(source_files.c.id)
        ).all()
    assert [tuple(row) for row in statuses] == [(old.etag, "superseded"), (new.etag, "completed")]


def test_reexecution_from_failure_reads_the_kept_copy_and_then_deletes_it(
    tmp_path, monkeypatch, local_bucket, sqlite_engine
):
    key = PLAIN + ".gz"
    local_bucket.put(key, gzip_members(DATA))
    monkeypatch.setenv("CATALOG_TEST_BUCKET_URL", local_bucket.url)
    monkeypatch.setenv("CATALOG_TEST_DATABASE_URL", str(sqlite_engine.url))
    monkeypatch.setenv("CATALOG_TEST_CHUNK_BYTES", str(CHUNK_BYTES))
    monkeypatch.setenv("CATALOG_RETRY_BUDGET_S", "1.5")
    # Chunk 3 of the decompressed content: its reads (of the staged copy) keep failing.
    start = plan_chunks([DATA], len(DATA), CHUNK_BYTES).chunks[3].start
    fault = {"start": start, "failures": 1000, "markers": str(tmp_path / "markers")}
    monkeypatch.setenv(FAULT_SETTING, json.dumps(fault))
    with dg.instance_for_test() as instance:
        failed = execute_faulty_ingest(instance, key)
        assert not failed.success
        failure = next(e for e in failed.all_events if e.is_step_failure)
        assert failure.step_key == "catalog_ingest.process_chunk[chunk_00003]"
        staged = {i.key for i in local_bucket.list_objects(include_hidden=True)} - {key}
        assert len(staged) == 1 and next(iter(staged)).endswith(".staged.csv")

        monkeypatch.delenv(FAULT_SETTING)  # the bucket recovers
        again = execute_faulty_ingest(instance, key, reexecution_of=failed.run_id)
        assert again.success
        (materialization,) = [
            m
            for m in again.asset_materializations_for_node("catalog_ingest")
            if m.asset_key == dg.AssetKey("catalog_items")
        ]
        assert materialization.metadata["decompressed_bytes"].value == len(DATA)
        assert materialization.metadata["bytes"].value == local_bucket.head(key).size
        started = instance.get_records_for_run(
            again.run_id, of_type=dg.DagsterEventType.STEP_START
        ).records
        assert sorted(r.event_log_entry.step_key for r in started) == [
            "catalog_ingest.finalize",
            "catalog_ingest.process_chunk[chunk_00003]",
        ]
    assert {i.key for i in local_bucket.list_objects(include_hidden=True)} == {key}
    reference = make_engine(f"sqlite:///{tmp_path / 'plain.sqlite'}")
    upgrade(reference)
    local_bucket.put(PLAIN, DATA)
    ingest_object(local_bucket, reference, PLAIN, CHUNK_BYTES)
    renamed = {
        name: [tuple(PLAIN if value == key else value for value in row) for row in rows]
        for name, rows in content_dump(sqlite_engine).items()
    }
    assert renamed == content_dump(reference)


# --- the sensor ---------------------------------------------------------------------------

GOOD = sample_csv(5, seed=3)


@pytest.mark.parametrize("bucket_kind", ["local", "s3"])
def test_the_sensor_requests_compressed_objects_and_rejects_broken_ones(
    bucket_kind, request, sqlite_engine
):
    bucket = request.getfixturevalue(f"{bucket_kind}_bucket")
    prefix = getattr(bucket, "prefix", "")
    good_gz = bucket.put(f"{prefix}a_2026-01-01T00-00-00.csv.gz", gzipped(GOOD))
    good_zst = bucket.put(f"{prefix}b.CSV.ZST", zstd_frames(GOOD))
    no_url = f"{prefix}c_no_url.csv.gz"
    bucket.put(no_url, gzipped(b"sku,name,price\nA-1,Thing,3.50\n"))
    not_gzip = f"{prefix}d_not_gzip.csv.gz"
    bucket.put(not_gzip, GOOD)
    bucket.put(staged_key(good_gz.key, good_gz.etag), GOOD)  # a copy a failed file kept
    endpoint = request.getfixturevalue("s3_server") if bucket_kind == "s3" else None
    resources = {
        "bucket": BucketResource(url=bucket.url, endpoint_url=endpoint),
        "catalog_db": CatalogDatabase(url=str(sqlite_engine.url)),
        "ingest_settings": IngestSettings(chunk_bytes=1 << 20),
    }
    sensor = build_new_csv_objects_sensor()
    with dg.instance_for_test() as instance:
        result = sensor(dg.build_sensor_context(instance=instance, resources=resources))
        requested = {r.tags[OBJECT_KEY_TAG]: r for r in result.run_requests}
        assert sorted(requested) == [good_gz.key, good_zst.key]
        gz_request = requested[good_gz.key]
        assert gz_request.partition_key == partition_key_for(good_gz.key)  # the full key
        assert gz_request.tags["catalog/object_size"] == str(good_gz.size)
        with sqlite_engine.connect() as connection:
            rejected = dict(
                connection.execute(
                    select(source_files.c.object_key, source_files.c.rejected_reason).where(
                        source_files.c.status == "rejected"
                    )
                ).all()
            )
        assert set(rejected) == {no_url, not_gzip}
        assert "missing required column" in rejected[no_url] and "'url'" in rejected[no_url]
        assert rejected[not_gzip].startswith(f"{not_gzip}: the gzip stream is broken")
        materialized = {
            event.partition: event.metadata["rejected_reason"].value
            for event in result.asset_events
            if isinstance(event, dg.AssetMaterialization)
        }
        assert materialized == {partition_key_for(k): r for k, r in rejected.items()}
        for partitions in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(source_csvs.name, list(partitions.partition_keys))
        assert not [k for k in instance.get_dynamic_partitions(source_csvs.name) if "staged" in k]


# --- the executor, the CLI and a repair ---------------------------------------------------


def test_the_executor_judges_a_compressed_object_by_its_estimated_decompressed_size():
    plain = choose_execution(100_000, 64 * 1024)
    assert plain.mode == IN_PROCESS and plain.size == 100_000
    gz = choose_execution(100_000, 64 * 1024, compression="gzip", cores=1)
    assert gz.mode == MULTIPROCESS and gz.size == 100_000 * ESTIMATED_RATIO
    assert f"about {100_000 * ESTIMATED_RATIO:,} bytes decompressed" in gz.reason
    assert "a 100,000-byte gzip object" in gz.reason and "8 chunks" in gz.reason


def test_a_run_of_a_compressed_object_logs_the_estimated_size(
    monkeypatch, local_bucket, sqlite_engine
):
    key = PLAIN + ".gz"
    info = local_bucket.put(key, gzipped(GOOD))
    monkeypatch.setenv("CATALOG_TEST_BUCKET_URL", local_bucket.url)
    monkeypatch.setenv("CATALOG_TEST_DATABASE_URL", str(sqlite_engine.url))
    monkeypatch.setenv("CATALOG_TEST_CHUNK_BYTES", str(1 << 20))
    with dg.instance_for_test() as instance:
        partition = partition_key_for(key)
        instance.add_dynamic_partitions(source_csvs.name, [partition])
        result = dg.execute_job(
            dg.reconstructable(faulty_ingest_job),
            instance,
            run_config={},
            tags={"dagster/partition": partition},
            raise_on_error=False,
        )
        assert result.success
        (decision,) = [
            entry.dagster_event
            for entry in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
            if (entry.dagster_event.message or "").startswith("catalog_executor:")
        ]
    metadata = decision.engine_event_data.metadata
    assert metadata["mode"].value == IN_PROCESS
    assert metadata["object_bytes"].value == info.size * ESTIMATED_RATIO
    assert f"a {info.size:,}-byte gzip object" in decision.message
    assert {i.key for i in local_bucket.list_objects(include_hidden=True)} == {key}


def test_the_cli_ingests_a_folder_with_compressed_objects(tmp_path):
    folder = tmp_path / "bucket"
    folder.mkdir()
    (folder / (PLAIN + ".gz")).write_bytes(gzip_members(DATA))
    (folder / "other.csv.zst").write_bytes(zstd_frames(sample_csv(20, seed=5)))
    (folder / "notes.txt.gz").write_bytes(gzipped(b"not a csv"))
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    arguments = ("ingest", "--json", "--bucket", folder.as_uri(), "--database-url", url)
    first = cli(*arguments, "--chunk-bytes", "65536", cwd=tmp_path, env={"DAGSTER_HOME": ""})
    assert first.returncode == 0, first.stderr[-3000:]
    files = {entry["object_key"]: entry for entry in json_output(first)["files"]}
    assert set(files) == {PLAIN + ".gz", "other.csv.zst"}
    shop = files[PLAIN + ".gz"]
    assert shop["status"] == "completed" and shop["rows_total"] == ROWS
    assert shop["rows_valid"] + shop["rows_invalid"] == shop["verified_row_count"] == ROWS
    assert files["other.csv.zst"]["status"] == "completed"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [PLAIN + ".gz", "other.csv.zst", "notes.txt.gz"]
    )

    engine = make_engine(url)
    before = dump(engine)
    again = cli(*arguments, "--chunk-bytes", "65536", cwd=tmp_path, env={"DAGSTER_HOME": ""})
    assert again.returncode == 0, again.stderr[-3000:]
    assert json_output(again)["files"] == json_output(first)["files"]
    assert dump(engine) == before
    engine.dispose()


def test_a_compressed_file_that_failed_mid_ingest_is_repaired(tmp_path, sqlite_engine):
    bucket = LocalBucket(tmp_path / "bucket")
    key = PLAIN + ".zst"
    bucket.put(key, zstd_frames(DATA))
    url = str(sqlite_engine.url)
    assert run_cli("ingest", bucket, url).returncode == 0
    reference = content_dump(sqlite_engine)
    # What a run killed while writing chunk 1 leaves: chunk 1's rows missing, the file
    # and the chunk `failed` (its staged copy is long gone: a repair plans it again).
    file_id = lose_chunk(sqlite_engine, 1, "killed")
    assert content_dump(sqlite_engine) != reference

    repaired = run_cli("repair", bucket, url, key, "--json")
    assert repaired.returncode == 0, repaired.stderr
    result = last_json(repaired)["repair"]
    assert result["status"] == "completed" and result["rows_total"] == ROWS
    assert content_dump(sqlite_engine) == reference
    assert {i.key for i in bucket.list_objects(include_hidden=True)} == {key}
    (history,) = repairs_of(sqlite_engine, key)
    assert (history.outcome, history.source_file_id) == ("completed", file_id)

    staged = staged_key(key, result["current_etag"])
    refused = run_cli("repair", bucket, url, staged)
    assert refused.returncode == 2
    assert f"cannot repair {staged}: it is not ingested (hidden file" in refused.stderr


def test_a_plan_stored_before_staging_existed_still_reads_its_object(local_bucket, sqlite_engine):
    # A run re-executed from failure gets its plan from the previous run's pickled output;
    # one pickled by a version without `PlannedFile.data` reads the object itself.
    local_bucket.put(PLAIN, DATA)
    planned = plan_object(local_bucket, sqlite_engine, PLAIN, CHUNK_BYTES)
    assert planned.data is None
    old = object.__new__(type(planned))
    old.__setstate__(planned.__getstate__()[:-1])
    rows = sum(ingest_chunk(local_bucket, sqlite_engine, old, c).rows for c in old.chunks)
    summary = finalize(sqlite_engine, old, [], local_bucket)
    assert (summary.status, summary.rows_total, rows) == ("completed", ROWS, ROWS)


class FailingDeletes(FailingReads):
    """The real bucket, refusing every delete."""

    def read_range(self, info: ObjectInfo, start: int, end: int) -> bytes:
        return self.inner.read_range(info, start, end)

    def delete(self, key: str) -> None:
        raise RuntimeError(f"permission denied: {key}")


def test_a_copy_that_cannot_be_deleted_is_logged_and_the_file_still_completes(
    local_bucket, sqlite_engine, caplog
):
    key = PLAIN + ".gz"
    info = local_bucket.put(key, gzipped(DATA))
    with caplog.at_level("WARNING", logger="catalog_pipeline.ingest"):
        summary, _ = ingest_object(FailingDeletes(local_bucket), sqlite_engine, key, CHUNK_BYTES)
    assert summary.status == "completed" and summary.rows_total == ROWS
    staged = staged_key(key, info.etag)
    assert f"{key}: could not delete its staged copy {staged}" in caplog.text
    assert "permission denied" in caplog.text
    assert {i.key for i in local_bucket.list_objects(include_hidden=True)} == {key, staged}
