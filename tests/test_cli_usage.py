"""`catalog-pipeline` used wrongly: a bad chunk size or a bucket that does not exist stops
the command with exit 2 and a sentence, and objects it does not ingest are listed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from catalog_pipeline.cli import MAX_CHUNK_BYTES, UsageError, parse_chunk_bytes
from catalog_pipeline.core.bucket import BucketMissingError, LocalBucket
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.tables import source_files
from tests.test_cli import cli

RANGE = "from 1KiB (1,024 bytes) to 2GiB (2,147,483,648 bytes)"
NO_DAGSTER_HOME = {"DAGSTER_HOME": ""}


def _usage_error(result: subprocess.CompletedProcess) -> str:
    """Exit 2, one JSON line with no files on stdout, a sentence and no traceback on
    stderr; the JSON line's error."""
    assert result.returncode == 2, result.stderr
    (line,) = result.stdout.splitlines()
    summary = json.loads(line)
    assert summary["files"] == []
    assert result.stderr.startswith(f"catalog-pipeline: {summary['error']}\n")
    assert "Traceback" not in result.stderr
    return summary["error"]


@pytest.fixture
def bucket_folder(tmp_path: Path) -> Path:
    """A local bucket holding one small good CSV."""
    folder = tmp_path / "bucket"
    LocalBucket(folder).put("shop_2026-11-01T06-00-00.csv", sample_csv(40, seed=7))
    return folder


def _ingest(tmp_path: Path, bucket: str, *options: str, env: dict | None = None):
    return cli(
        "ingest",
        "--bucket",
        bucket,
        "--database-url",
        f"sqlite:///{tmp_path / 'catalog.sqlite'}",
        *options,
        cwd=tmp_path,
        env={**NO_DAGSTER_HOME, **(env or {})},
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "(0 bytes) is not a positive size"),
        ("-5", "is not a size"),
        ("1e20", "is not a size"),
        ("abc", "is not a size"),
        ("64MB", "is not a size"),  # decimal units are ambiguous here: KiB, MiB, GiB only
        ("1023", "(1,023 bytes) is below the smallest chunk"),
        ("2147483649", "(2,147,483,649 bytes) is above what one step can hold"),
        ("3GiB", "(3,221,225,472 bytes) is above what one step can hold"),
    ],
)
def test_a_bad_chunk_size_is_a_usage_error_naming_the_value_and_the_range(
    tmp_path, bucket_folder, value, problem
):
    result = _ingest(tmp_path, f"file://{bucket_folder}", "--json", "--chunk-bytes", value)
    error = _usage_error(result)
    assert error.startswith(f"--chunk-bytes {value!r} {problem}")
    assert RANGE in error
    assert not (tmp_path / "catalog.sqlite").exists()  # stopped before touching anything


def test_a_bad_chunk_size_without_json_is_a_sentence_on_stderr_only(tmp_path, bucket_folder):
    result = _ingest(tmp_path, f"file://{bucket_folder}", "--chunk-bytes", "0")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("catalog-pipeline: --chunk-bytes '0' (0 bytes) is not a")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", "'0' (0 bytes) is not a positive size"),
        ("1e20", "'1e20' is not a size: give a whole number of bytes, from 1KiB"),
        ("64MiB", "'64MiB' has a unit, but it is read as a whole number of bytes"),
    ],
)
def test_a_bad_chunk_size_in_the_environment_names_the_variable(
    tmp_path, bucket_folder, value, expected
):
    result = _ingest(
        tmp_path, f"file://{bucket_folder}", "--json", env={"CATALOG_CHUNK_BYTES": value}
    )
    assert _usage_error(result).startswith(f"$CATALOG_CHUNK_BYTES {expected}")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1024", 1024),
        ("1KiB", 1024),
        ("512kib", 512 * 1024),
        ("64 MiB", 64 * 1024**2),
        (" 65536 ", 65536),
        ("2GiB", MAX_CHUNK_BYTES),
        ("2147483648", MAX_CHUNK_BYTES),
        ("4096B", 4096),
    ],
)
def test_chunk_sizes_in_bytes_or_binary_units_are_read_exactly(text, size):
    assert parse_chunk_bytes(text) == size


def test_a_unit_is_refused_where_only_bytes_are_read():
    assert parse_chunk_bytes("65536", "$CATALOG_CHUNK_BYTES", units=False) == 65536
    with pytest.raises(UsageError, match="write 1024;"):
        parse_chunk_bytes("1KiB", "$CATALOG_CHUNK_BYTES", units=False)


def test_the_smallest_chunk_size_ingests_a_small_file_in_many_chunks(tmp_path, bucket_folder):
    result = _ingest(tmp_path, f"file://{bucket_folder}", "--json", "--chunk-bytes", "1KiB")
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)["files"]
    assert entry["status"] == "completed" and entry["rows_total"] == 40
    engine = create_engine(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    with engine.connect() as connection:
        chunk_bytes, chunk_count = connection.execute(
            select(source_files.c.chunk_bytes, source_files.c.chunk_count)
        ).one()
    engine.dispose()
    assert chunk_bytes == 1024 and chunk_count > 1


def test_a_bucket_folder_that_does_not_exist_is_a_usage_error(tmp_path):
    error = _usage_error(_ingest(tmp_path, "file://./no-such-folder", "--json"))
    assert error == f"bucket folder {tmp_path.resolve() / 'no-such-folder'} does not exist"


def test_a_file_given_as_the_bucket_folder_is_a_usage_error(tmp_path, bucket_folder):
    error = _usage_error(
        _ingest(tmp_path, f"file://{bucket_folder / 'shop_2026-11-01T06-00-00.csv'}", "--json")
    )
    assert error.endswith("shop_2026-11-01T06-00-00.csv is a file, not a folder")


def test_an_s3_bucket_that_does_not_exist_is_a_usage_error(tmp_path, s3_server):
    result = _ingest(
        tmp_path,
        "s3://no-such-bucket/drops/",
        "--json",
        env={"CATALOG_S3_ENDPOINT_URL": s3_server},
    )
    assert _usage_error(result) == f"bucket 'no-such-bucket' does not exist at {s3_server}"
    assert "Check the command line" in result.stderr


def test_a_missing_folder_lists_nothing_for_the_sensor_and_fails_the_check(tmp_path):
    """The sensor of a fresh `dagster dev` lists a folder nothing has written yet."""
    bucket = LocalBucket(tmp_path / "not-yet")
    assert list(bucket.list_objects()) == []
    with pytest.raises(BucketMissingError, match="does not exist"):
        bucket.check()


def test_hidden_and_non_csv_objects_are_listed_as_skipped_with_their_reason(
    tmp_path, bucket_folder
):
    (bucket_folder / ".draft.csv").write_bytes(sample_csv(5, seed=1))
    (bucket_folder / ".shop_2026-11-02T06-00-00.csv.tmp").write_bytes(b"sku,name\n")
    (bucket_folder / "notes.txt").write_text("not a csv")
    (bucket_folder / "old").mkdir()
    (bucket_folder / "old" / "readme.md").write_text("not a csv either")

    result = _ingest(tmp_path, f"file://{bucket_folder}", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [entry["object_key"] for entry in summary["files"]] == ["shop_2026-11-01T06-00-00.csv"]
    hidden = "hidden file (name starts with '.')"
    not_a_csv = "not a CSV: the name does not end in '.csv', '.csv.gz' or '.csv.zst'"
    assert summary["skipped"] == [
        {"key": ".draft.csv", "reason": hidden},
        {
            "key": ".shop_2026-11-02T06-00-00.csv.tmp",
            "reason": f"{hidden}: an unfinished write or another program's temporary file",
        },
        {"key": "notes.txt", "reason": not_a_csv},
        {"key": "old/readme.md", "reason": not_a_csv},
    ]

    human = _ingest(tmp_path, f"file://{bucket_folder}")
    assert human.returncode == 0, human.stderr
    assert (
        "4 objects skipped (2 hidden, 2 not a CSV): .draft.csv, "
        ".shop_2026-11-02T06-00-00.csv.tmp, notes.txt, old/readme.md" in human.stdout
    )


def test_a_link_to_a_file_outside_the_bucket_is_skipped_with_the_root_cause(
    tmp_path, bucket_folder
):
    outside = tmp_path / "secret.csv"
    outside.write_bytes(sample_csv(5, seed=2))
    (bucket_folder / "x.csv").symlink_to(outside)

    result = _ingest(tmp_path, f"file://{bucket_folder}", "--json")

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    assert [entry["object_key"] for entry in summary["files"]] == ["shop_2026-11-01T06-00-00.csv"]
    [skipped] = summary["skipped"]
    assert skipped["key"] == "x.csv"
    assert skipped["reason"].startswith("outside the bucket: key 'x.csv' escapes the bucket folder")
    assert "Dagster" not in skipped["reason"]
    assert [info.key for info in LocalBucket(bucket_folder).list_objects()] == [
        "shop_2026-11-01T06-00-00.csv"
    ]  # the sensor's listing leaves it out too
