"""An opening quote that never closes costs its own line, never the rows after it.

Python's `csv` reads `SQ-500,"Thing 500,…` as the start of a field that runs to the next
quote character anywhere in the file; the scanner (`core.records`) cuts such a record at
its first line end instead, the reader logs it as `unclosed_quote`, and the rows after it
are read as rows, under any chunk size.
"""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog_pipeline.core.chunking import plan_chunks
from catalog_pipeline.core.ingest import process_chunk_bytes
from catalog_pipeline.core.reader import (
    FIELD_TOO_LONG,
    UNCLOSED_QUOTE,
    read_chunk,
)
from catalog_pipeline.core.records import DEFAULT_QUOTE_BOUNDS, QuoteBounds
from catalog_pipeline.core.validation import map_header

HEADER = ["sku", "name", "url", "description", "price"]
WORDS = ["red", "Vinyl", 'a 12" record', "blue, green", 'said "hi"', "Café", "日本"]


def _row(index: int, rng_words: list[str]) -> list[str]:
    description = "\n".join(rng_words) if len(rng_words) > 1 else "plain"
    return [
        f"SQ-{index}",
        f"Thing {index}, {rng_words[0]}",
        f"https://shop.example.com/p/{index}",
        description,
        f"{index % 90 + 1}.99",
    ]


def _written(rows: list[list[str]]) -> list[bytes]:
    """Each row as `csv.writer` writes it (quoting what needs quotes), without its LF."""
    lines = []
    for row in [HEADER, *rows]:
        out = io.StringIO(newline="")
        csv.writer(out, lineterminator="\n").writerow(row)
        lines.append(out.getvalue().removesuffix("\n").encode())
    return lines


def _ingest(
    data: bytes, chunk_bytes: int, block_bytes: int, bounds: QuoteBounds = DEFAULT_QUOTE_BOUNDS
):
    """Plan in blocks, then process each chunk: (plan, SKUs of valid items, invalid records)."""
    blocks = [data[at : at + block_bytes] for at in range(0, len(data), block_bytes)]
    plan = plan_chunks(blocks, len(data), chunk_bytes, bounds)
    mapping = map_header(plan.header)
    skus: set[str] = set()
    invalid = []
    rows = 0
    for chunk in plan.chunks:
        outcome = process_chunk_bytes(data[chunk.start : chunk.end], chunk.start, mapping, bounds)
        skus.update(outcome.items.column("sku").to_pylist())
        invalid.extend(outcome.invalid)
        rows += outcome.rows
    assert rows == plan.record_count  # what finalize reconciles
    return plan, skus, invalid


@pytest.mark.parametrize("chunk_bytes", [1024, 65536, 64 << 20])
@pytest.mark.parametrize("block_bytes", [333, 8 << 20])
def test_a_stray_opening_quote_costs_only_its_row(chunk_bytes, block_bytes):
    rows = [_row(i, WORDS[i % 7 : i % 7 + 1 + i % 3]) for i in range(1000)]
    lines = _written(rows)
    broken = b'SQ-500,"Thing 500,https://shop.example.com/p/500,plain,1.99'
    lines[501] = broken  # (line 0 is the header)
    data = b"\n".join(lines) + b"\n"

    plan, skus, invalid = _ingest(data, chunk_bytes, block_bytes)

    assert skus == {f"SQ-{i}" for i in range(1000) if i != 500}
    assert plan.record_count == 1000 and plan.unclosed_quotes == 1
    [record] = invalid
    assert record.reasons == (UNCLOSED_QUOTE,)
    assert record.byte_offset == data.index(broken)
    assert record.raw == broken  # the whole line: the row can be mended from the log


def test_a_stray_quote_in_a_file_without_other_quotes_is_cut_at_its_line_too():
    lines = [b"sku,name,url"] + [
        b"SQ-%d,Thing %d,https://x.example.com/%d" % (i, i, i) for i in range(1000)
    ]
    lines[501] = b'SQ-500,"Thing 500,https://x.example.com/500'
    data = b"\n".join(lines) + b"\n"
    for chunk_bytes in (1024, 65536):
        _, skus, invalid = _ingest(data, chunk_bytes, 4096)
        assert len(skus) == 999 and "SQ-500" not in skus
        assert [r.reasons for r in invalid] == [(UNCLOSED_QUOTE,)]


def _multi_line_file(line_feeds: int, line: bytes = b"line") -> bytes:
    description = b"\n".join([line] * (line_feeds + 1))
    return (
        b"sku,name,url,description\n"
        b'A-1,One,https://x.example.com/1,"' + description + b'"\n'
        b"A-2,Two,https://x.example.com/2,short\n"
    )


def test_a_quoted_field_within_the_bounds_spans_its_lines():
    data = _multi_line_file(500)
    _, skus, invalid = _ingest(data, 1024, 100)
    assert skus == {"A-1", "A-2"} and not invalid


def test_a_quoted_field_past_the_line_feed_bound_is_unclosed():
    data = _multi_line_file(501)
    _, skus, invalid = _ingest(data, 1024, 100)
    assert invalid[0].reasons == (UNCLOSED_QUOTE,)
    assert invalid[0].raw == b'A-1,One,https://x.example.com/1,"line'
    # The rest of the field is read as rows (one field each: malformed); the next row
    # survives.
    assert {r.reasons for r in invalid[1:]} == {("malformed_row",)} and len(invalid) == 502
    assert skus == {"A-2"}
    # The bound is configurable, and the plan and the reads agree on it.
    _, skus, invalid = _ingest(data, 1024, 100, QuoteBounds(max_line_feeds=600))
    assert skus == {"A-1", "A-2"} and not invalid


def test_a_quoted_field_past_the_byte_bound_is_unclosed():
    data = _multi_line_file(3, b"x" * 400_000)
    _, skus, invalid = _ingest(data, 1 << 20, 65536)
    assert invalid[0].reasons == (UNCLOSED_QUOTE,) and "A-2" in skus
    _, skus, invalid = _ingest(data, 1 << 20, 65536, QuoteBounds(max_bytes=2 << 20))
    assert [r.reasons for r in invalid] == [(FIELD_TOO_LONG,)]  # one record, but 1.2 MB


def test_a_long_single_line_quoted_field_is_read_as_csv_reads_it():
    """One line, one quoted field of 3 MiB (past the byte bound, but without a line feed):
    a record with a field too long, under any blocks; its neighbours are read."""
    long_field = b'"' + b"y" * (3 << 20) + b'"'
    data = (
        b"sku,name,url\nA-1,"
        + long_field
        + b",https://x.example.com\nA-2,Two,https://x.example.com/2\n"
    )
    for block_bytes in (4096, 1 << 20, len(data)):
        plan, skus, invalid = _ingest(data, 1 << 20, block_bytes)
        assert plan.record_count == 2 and plan.unclosed_quotes == 0
        assert skus == {"A-2"} and [r.reasons for r in invalid] == [(FIELD_TOO_LONG,)]


def test_a_long_single_line_quoted_field_meeting_a_line_end_is_unclosed():
    long_field = b'"' + b"y" * (3 << 20)
    data = b"sku,name,url\nA-1," + long_field + b"\nA-2,Two,https://x.example.com/2\n"
    for block_bytes in (4096, len(data)):
        plan, skus, invalid = _ingest(data, 1 << 20, block_bytes)
        assert plan.unclosed_quotes == 1 and skus == {"A-2"}
        assert [r.reasons for r in invalid] == [(UNCLOSED_QUOTE,)]


def test_a_field_over_the_csv_field_size_limit_is_field_too_long():
    for field in (b"z" * 200_000, b'"' + b"z" * 200_000 + b'"'):
        data = (
            b"sku,name,url\nA-1,"
            + field
            + b",https://x.example.com\nA-2,Two,https://x.example.com/2\n"
        )
        records = read_chunk(data[13:], 13, 3).records
        assert [r.error for r in records] == [FIELD_TOO_LONG, None]


@st.composite
def files_with_stray_quotes(draw):
    """A valid file as `csv.writer` writes it, quoted multi-line descriptions included, and
    stray opening quotes inserted at the start of random fields of random rows."""
    count = draw(st.integers(min_value=1, max_value=60))
    rows = [
        _row(i, draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=4)))
        for i in range(count)
    ]
    lines = _written(rows)
    touched = draw(st.sets(st.integers(min_value=0, max_value=count - 1), max_size=count // 3 + 1))
    for index in touched:
        fields = rows[index]
        column = draw(st.integers(min_value=0, max_value=len(fields) - 1))
        line = _written([fields[:column]])[1] if column else b""
        rest = _written([fields[column:]])[1]
        lines[index + 1] = line + (b"," if column else b"") + b'"' + rest
    data = b"\n".join(lines) + (b"\n" if draw(st.booleans()) else b"")
    return data, {f"SQ-{i}" for i in range(count) if i not in touched}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=files_with_stray_quotes(),
    chunk_bytes=st.integers(min_value=1024, max_value=8192),
    block_bytes=st.integers(min_value=1, max_value=5000),
)
def test_every_row_untouched_by_a_stray_quote_is_ingested(case, chunk_bytes, block_bytes):
    data, untouched = case
    _, skus, _ = _ingest(data, chunk_bytes, block_bytes)
    assert untouched <= skus
