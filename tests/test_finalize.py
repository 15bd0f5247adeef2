"""`finalize` never reports a file complete with a chunk's result missing: a commit the
database acknowledged and then lost (a crash with `synchronous_commit` off, a failover)
is redone from the bucket, or the file is `failed` with the chunks named."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from catalog_pipeline.core.errors import IncompleteFileError
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.tables import source_chunks, source_files
from catalog_pipeline.ingest import finalize, ingest_chunk, plan_object
from tests.helpers import content_dump

KEY = "shop_2026-11-07T06-00-00.csv"
CHUNK_BYTES = 16 * 1024


def _lose_chunk(engine, index: int) -> None:
    """What a lost commit leaves: the chunk row as planned (its items may be gone too)."""
    with engine.begin() as connection:
        connection.execute(
            update(source_chunks)
            .where(source_chunks.c.chunk_index == index)
            .values(status="planned", rows=None, valid=None, invalid=None)
        )


def _ingest_all(bucket, engine):
    planned = plan_object(bucket, engine, KEY, CHUNK_BYTES, run_id="run-1")
    for chunk in planned.chunks:
        ingest_chunk(bucket, engine, planned, chunk, "run-1")
    return planned


def test_a_chunk_result_lost_after_its_step_succeeded_is_redone_by_finalize(engine, local_bucket):
    local_bucket.put(KEY, sample_csv(300, seed=51))
    planned = _ingest_all(local_bucket, engine)
    clean = finalize(engine, planned, ["run-1"], local_bucket)
    expected = content_dump(engine)
    _lose_chunk(engine, 2)

    summary = finalize(engine, planned, ["run-1"], local_bucket)

    assert summary == clean
    assert summary.status == "completed" and summary.rows_total == 300
    assert content_dump(engine) == expected
    with engine.connect() as connection:
        attempts = connection.execute(
            select(source_chunks.c.attempts).where(source_chunks.c.chunk_index == 2)
        ).scalar_one()
    assert attempts == 2


def test_without_the_bucket_a_lost_chunk_fails_the_file_with_its_index(engine, local_bucket):
    local_bucket.put(KEY, sample_csv(300, seed=52))
    planned = _ingest_all(local_bucket, engine)
    _lose_chunk(engine, 1)

    with pytest.raises(IncompleteFileError) as caught:
        finalize(engine, planned, ["run-1"])

    assert caught.value.chunks == (1,)
    assert f"{KEY}: 1 chunk(s) without a stored result (1)" in str(caught.value)
    with engine.connect() as connection:
        assert connection.execute(select(source_files.c.status)).scalar_one() == "failed"
