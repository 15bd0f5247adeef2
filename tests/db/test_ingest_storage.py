"""Storage semantics on SQLite and Postgres: precedence, idempotency, invalid logs."""

from __future__ import annotations

import gc
import itertools
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import date

import pytest
from sqlalchemy import func, select

from catalog_pipeline.core.errors import ObjectChangedError
from catalog_pipeline.core.ingest import process_chunk_bytes
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.core.validation import map_header
from catalog_pipeline.db.ingest import write_chunk
from catalog_pipeline.db.tables import (
    catalog_item_sources,
    catalog_items,
    invalid_item_logs,
    playcount_measurements,
    source_files,
)
from catalog_pipeline.ingest import (
    collector_paused,
    finalize,
    ingest_chunk,
    ingest_object,
    plan_object,
)
from tests.helpers import dump

HEADER = "sku,name,url,price\n"


def _items(engine) -> dict[str, tuple]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(catalog_items.c.sku, catalog_items.c.name, catalog_items.c.object_key)
        )
        return {row.sku: (row.name, row.object_key) for row in rows}


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_precedence_holds_whatever_order_chunks_finish(engine, local_bucket, order):
    rows = "".join(f"S{i},first-{i},https://a.example/{i},1\n" for i in range(40))
    rows += "".join(f"S{i},second-{i},https://a.example/{i},2\n" for i in range(0, 40, 2))
    rows += "".join(f"S{i},third-{i},https://a.example/{i},3\n" for i in range(0, 40, 4))
    local_bucket.put("shop_2026-01-01T00-00-00.csv", (HEADER + rows).encode())
    planned = plan_object(local_bucket, engine, "shop_2026-01-01T00-00-00.csv", 1024)
    assert len(planned.chunks) == 3
    for index in order:
        ingest_chunk(local_bucket, engine, planned, planned.chunks[index])
    finalize(engine, planned)
    items = _items(engine)
    for i in range(40):
        expected = "third" if i % 4 == 0 else "second" if i % 2 == 0 else "first"
        assert items[f"S{i}"][0] == f"{expected}-{i}"


def test_older_scrape_backfilled_later_never_overwrites_newer(engine, local_bucket):
    new_key, old_key = "shop_2026-03-01T00-00-00.csv", "shop_2026-01-01T00-00-00.csv"
    local_bucket.put(new_key, (HEADER + "A,new,https://a.example/a,1\n").encode())
    local_bucket.put(
        old_key, (HEADER + "A,old,https://a.example/a,1\nB,b,https://b.c/,1\n").encode()
    )
    ingest_object(local_bucket, engine, new_key, 1024)
    ingest_object(local_bucket, engine, old_key, 1024)
    assert _items(engine) == {"A": ("new", new_key), "B": ("b", old_key)}
    # Provenance lists every file a SKU was seen in, also where its row lost precedence.
    with engine.connect() as connection:
        seen = connection.execute(
            select(catalog_items.c.sku, source_files.c.object_key)
            .join(catalog_item_sources, catalog_item_sources.c.item_id == catalog_items.c.id)
            .join(source_files, source_files.c.id == catalog_item_sources.c.source_file_id)
        ).all()
    assert sorted(seen) == [("A", old_key), ("A", new_key), ("B", old_key)]


OLD_KEY, NEW_KEY = "shop_2026-01-01T00-00-00.csv", "shop_2026-02-01T00-00-00.csv"


def _scrapes(local_bucket, engine, header: str, old: list[str], new: list[str]):
    """Two scrapes of one shop: `old` ingested, `new` planned in 1 KiB chunks. Returns the
    new file's bytes, the old file's id and the new file's plan."""
    local_bucket.put(OLD_KEY, (header + "".join(old)).encode())
    content = (header + "".join(new)).encode()
    local_bucket.put(NEW_KEY, content)
    ingest_object(local_bucket, engine, OLD_KEY, 1024)
    old_id = plan_object(local_bucket, engine, OLD_KEY, 1024).source_file_id
    return content, old_id, plan_object(local_bucket, engine, NEW_KEY, 1024)


@pytest.mark.parametrize("order", ["forward", "backward"])
def test_provenance_and_readings_of_new_and_updated_items_in_one_chunk(engine, local_bucket, order):
    """A chunk holding SKUs never seen (inserted) next to SKUs an older file stored
    (updated): every item gets its provenance and scrape reading for this file, a SKU
    twice in the file points at its last record, and a re-run changes nothing."""
    header = "sku,name,url,play_count,note\n"
    pad = "," + "n" * 500  # an ignored column, so that records fill a chunk quickly
    records = [
        f"A,a2,https://a.example/,11{pad}\n",
        f"C,c,https://c.example/,5{pad}\n",
        f"C,c2,https://c.example/,6{pad}\n",
        f"D,d,https://d.example/,{pad}\n",
        f"B,b2,https://b.c/,25{pad}\n",
    ]
    old = [f"A,a,https://a.example/,10{pad}\n", f"B,b,https://b.c/,20{pad}\n"]
    content, _, planned = _scrapes(local_bucket, engine, header, old, records)

    def offset(record: str) -> int:
        return content.index(record.encode())

    def chunk_of(record: str) -> int:
        return next(c.index for c in planned.chunks if c.start <= offset(record) < c.end)

    # One chunk inserts C and updates A; the other C record is in another chunk.
    assert chunk_of("A,a2") == chunk_of("C,c,") != chunk_of("C,c2")
    chunks = planned.chunks if order == "forward" else planned.chunks[::-1]
    for chunk in chunks:
        ingest_chunk(local_bucket, engine, planned, chunk)
    finalize(engine, planned)

    with engine.connect() as connection:
        sources = connection.execute(
            select(catalog_items.c.sku, catalog_item_sources.c.byte_offset)
            .join(catalog_item_sources, catalog_item_sources.c.item_id == catalog_items.c.id)
            .where(catalog_item_sources.c.source_file_id == planned.source_file_id)
        ).all()
        readings = connection.execute(
            select(catalog_items.c.sku, playcount_measurements.c.play_count)
            .join(playcount_measurements, playcount_measurements.c.item_id == catalog_items.c.id)
            .where(playcount_measurements.c.measured_on == date(2026, 2, 1))  # the scrape day
        ).all()
    assert dict(sources) == {
        "A": offset("A,a2"),
        "B": offset("B,b2"),
        "C": offset("C,c2"),
        "D": offset("D,d"),
    }
    assert _items(engine) == {
        sku: (name, NEW_KEY) for sku, name in [("A", "a2"), ("B", "b2"), ("C", "c2"), ("D", "d")]
    }
    assert dict(readings) == {"A": 11, "B": 25, "C": 6}
    stored = dump(engine)
    ingest_object(local_bucket, engine, NEW_KEY, 1024)
    for chunk in planned.chunks:
        ingest_chunk(local_bucket, engine, planned, chunk)
    assert dump(engine) == stored


def test_an_update_records_the_file_whose_record_it_replaced(engine, local_bucket):
    """`replaced_file_id` tells the upsert whether this file can already hold the item's
    provenance (only if the record it replaced is this file's); a chunk that replaces
    another chunk's record of the same SKU still writes its provenance over that one."""
    header = "sku,name,url,note\n"
    pad = "," + "n" * 500
    records = [
        f"A,a2,https://a.example/{pad}\n",
        f"B,b2,https://b.c/{pad}\n",
        f"A,a3,https://a.example/{pad}\n",
    ]
    old = [f"A,a,https://a.example/{pad}\n", f"B,b,https://b.c/{pad}\n"]
    content, old_id, planned = _scrapes(local_bucket, engine, header, old, records)
    first, second = planned.chunks  # A's first record (and B's), then A's second
    assert first.end <= content.index(b"A,a3") < second.end
    for chunk in planned.chunks:
        ingest_chunk(local_bucket, engine, planned, chunk)
    finalize(engine, planned)
    with engine.connect() as connection:
        replaced = dict(
            connection.execute(select(catalog_items.c.sku, catalog_items.c.replaced_file_id)).all()
        )
        sources = dict(
            connection.execute(
                select(catalog_items.c.sku, catalog_item_sources.c.byte_offset)
                .join(catalog_item_sources, catalog_item_sources.c.item_id == catalog_items.c.id)
                .where(catalog_item_sources.c.source_file_id == planned.source_file_id)
            ).all()
        )
    assert replaced == {"A": planned.source_file_id, "B": old_id}
    assert sources == {"A": content.index(b"A,a3"), "B": content.index(b"B,b2")}
    assert _items(engine) == {"A": ("a3", NEW_KEY), "B": ("b2", NEW_KEY)}


def test_new_version_of_a_key_wins_even_at_a_lower_offset(engine, local_bucket):
    key = "shop_2026-01-01T00-00-00.csv"
    local_bucket.put(
        key, (HEADER + "X,x,https://x.example/,1\nA,v1,https://a.example/,1\n").encode()
    )
    ingest_object(local_bucket, engine, key, 1024)
    local_bucket.put(key, (HEADER + "A,version-two,https://a.example/,1\n").encode())
    ingest_object(local_bucket, engine, key, 1024)
    assert _items(engine)["A"][0] == "version-two"
    with engine.connect() as connection:
        statuses = connection.execute(
            select(source_files.c.status, source_files.c.superseded_by).order_by(source_files.c.id)
        ).all()
    assert [s.status for s in statuses] == ["superseded", "completed"]
    assert statuses[0].superseded_by is not None


def test_rerunning_a_chunk_and_a_file_changes_nothing(engine, local_bucket):
    key = "shop_2026-02-01T00-00-00.csv"
    local_bucket.put(key, sample_csv(300, seed=3, description_bytes=200))
    planned = plan_object(local_bucket, engine, key, 4096)
    for chunk in planned.chunks:
        ingest_chunk(local_bucket, engine, planned, chunk)
    finalize(engine, planned)
    first = dump(engine)

    ingest_chunk(local_bucket, engine, planned, planned.chunks[1])
    finalize(engine, planned)
    assert dump(engine) == first

    ingest_object(local_bucket, engine, key, 4096)
    assert dump(engine) == first


def test_invalid_rows_are_logged_once_with_offsets_and_reasons(engine, local_bucket):
    key = "shop_2026-02-01T00-00-00.csv"
    body = (
        HEADER
        + "ok1,Fine,https://a.example/,1\n,no sku,javascript:x,abc\nok2,Fine,https://a.example/,2\n"
    )
    local_bucket.put(key, body.encode())
    summary, reasons = ingest_object(local_bucket, engine, key, 1024)
    ingest_object(local_bucket, engine, key, 1024)
    with engine.connect() as connection:
        logs = connection.execute(select(invalid_item_logs)).all()
    assert len(logs) == 1
    assert logs[0].byte_offset == body.encode().index(b",no sku")
    assert json.loads(logs[0].reasons) == ["missing_sku", "url_bad_scheme", "bad_price"]
    assert logs[0].raw == ",no sku,javascript:x,abc"
    assert (summary.rows_total, summary.rows_valid, summary.rows_invalid) == (3, 2, 1)
    assert summary.verified_row_count == 3 and summary.status == "completed"
    assert reasons == {"missing_sku": 1, "url_bad_scheme": 1, "bad_price": 1}


def test_file_missing_required_columns_is_rejected_and_writes_nothing(engine, local_bucket):
    key = "shop_2026-02-01T00-00-00.csv"
    local_bucket.put(key, b"sku,title\nA,thing\n")
    summary, _ = ingest_object(local_bucket, engine, key, 1024)
    assert summary.status == "rejected" and "url" in summary.rejected_reason
    with engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(catalog_items)).scalar() == 0


def test_empty_object_is_rejected_with_a_reason(engine, local_bucket):
    local_bucket.put("empty.csv", b"")
    summary, _ = ingest_object(local_bucket, engine, "empty.csv", 1024)
    assert summary.status == "rejected" and "empty" in summary.rejected_reason


def test_concurrent_chunks_sharing_skus_do_not_deadlock(postgres_engine, local_bucket):
    """Two chunks of one file holding the same SKUs in opposite orders, written at the same
    moment (as parallel chunk steps do): both commit, and the later records win."""
    count = 3000
    forward = "".join(f"S{i:05d},first-{i},https://a.example/{i},1\n" for i in range(count))
    backward = "".join(
        f"S{i:05d},later-{i},https://a.example/{i},2\n" for i in reversed(range(count))
    )
    key = "shop_2026-01-01T00-00-00.csv"
    local_bucket.put(key, (HEADER + forward + backward).encode())
    planned = plan_object(local_bucket, postgres_engine, key, len(HEADER) + len(forward))
    assert len(planned.chunks) == 2
    mapping = map_header(planned.header)
    outcomes = []
    for chunk in planned.chunks:
        data = local_bucket.read_range(planned.info, chunk.start, chunk.end)
        outcomes.append(process_chunk_bytes(data, chunk.start, mapping))

    def write(index: int, barrier: threading.Barrier, run_id: str) -> None:
        barrier.wait()
        write_chunk(postgres_engine, planned.source_file_id, index, outcomes[index], run_id, 0)

    for attempt in range(3):
        barrier = threading.Barrier(2)
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(write, index, barrier, f"run-{attempt}") for index in (0, 1)]
            for future in futures:
                future.result()  # a deadlock raises here
    summary = finalize(postgres_engine, planned)
    assert (summary.status, summary.rows_valid) == ("completed", 2 * count)
    items = _items(postgres_engine)
    assert len(items) == count
    assert all(name == f"later-{int(sku[1:])}" for sku, (name, _) in items.items())


@pytest.mark.parametrize("workers", [1, 2])
def test_core_ingest_with_worker_processes_equals_one_process(engine, local_bucket, workers):
    """`ingest_object(workers=2)` runs the chunks in two processes; the tables are the same."""
    key = "shop_2026-01-01T00-00-00.csv"
    local_bucket.put(key, sample_csv(600, seed=5))
    summary, reasons = ingest_object(local_bucket, engine, key, 16 * 1024, workers=workers)
    assert summary.status == "completed"
    assert summary.chunks_total > 4
    assert summary.rows_total == summary.verified_row_count == 600
    assert sum(reasons.values()) >= summary.rows_invalid > 0
    before = dump(engine)
    ingest_object(local_bucket, engine, key, 16 * 1024, workers=workers)
    assert dump(engine) == before


def test_nul_bytes_are_invalid_rows_not_a_failed_chunk(engine, local_bucket):
    """Postgres text cannot hold NUL: such a row is logged (escaped), the rest lands."""
    key = "shop_2026-01-01T00-00-00.csv"
    body = b"A,na\x00me,https://a.example/,1\nB,ok,https://b.example/,2\nC,x\x00,ftp://x,1\n"
    local_bucket.put(key, HEADER.encode() + body)
    summary, reasons = ingest_object(local_bucket, engine, key, 1024)
    assert (summary.status, summary.rows_valid, summary.rows_invalid) == ("completed", 1, 2)
    assert reasons == {"encoding_error": 2}
    assert set(_items(engine)) == {"B"}
    with engine.connect() as connection:
        raws = connection.execute(
            select(invalid_item_logs.c.raw).order_by(invalid_item_logs.c.byte_offset)
        ).scalars()
        assert list(raws) == ["A,na\\x00me,https://a.example/,1", "C,x\\x00,ftp://x,1"]


def test_chunks_pause_the_garbage_collector_and_always_restore_it(engine, local_bucket):
    key = "shop_2026-01-01T00-00-00.csv"
    local_bucket.put(key, (HEADER + "A,a,https://a.example/,1\n").encode())
    planned = plan_object(local_bucket, engine, key, 1024)
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():  # nested: the inner exit leaves it paused
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
    local_bucket.put(key, (HEADER + "A,changed,https://a.example/,1\n").encode())
    with pytest.raises(ObjectChangedError):
        ingest_chunk(local_bucket, engine, planned, planned.chunks[0])
    assert gc.isenabled()  # restored after a failed chunk too
