"""Chunk planning and reading: the chunks of any CSV yield exactly the file's records."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog_pipeline.core.chunking import UTF8_BOM, header_from_prefix, plan_chunks
from catalog_pipeline.core.errors import HeaderError
from catalog_pipeline.core.reader import (
    ENCODING_ERROR,
    MALFORMED_ROW,
    UNCLOSED_QUOTE,
    ColumnarChunk,
    _read_columnar,
    _record_spans,
    read_chunk,
    read_chunk_columns,
)
from catalog_pipeline.core.records import (
    DEFAULT_QUOTE_BOUNDS,
    LF,
    QuoteBounds,
    RecordScanner,
    _alternating,
    _walk,
)

# Well-formed files whose quoted fields run over many lines, read as `csv` reads them.
WIDE_QUOTES = QuoteBounds(max_bytes=1 << 30, max_line_feeds=1 << 30)

ALPHABET = st.sampled_from(
    list("abcXYZ019 ,.;-_/\"'\n\r\t")
    + ["é", "ß", "日本", "💿", "\u00a0", '""', "\r\n", "\ufeff"]  # BOM text mid-file
)
FIELD = st.lists(ALPHABET, max_size=12).map("".join)
LONG_FIELD = st.integers(min_value=1000, max_value=6000).map(lambda n: ("描述\n," * n)[:n])
PLAIN_FIELD = st.text(alphabet=st.sampled_from(list('abc 12"é日.')), min_size=1, max_size=8).filter(
    lambda s: not s.startswith('"')
)


def _blocks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, position, index = [], 0, 0
    while position < len(data):
        step = sizes[index % len(sizes)] if sizes else len(data)
        out.append(data[position : position + step])
        position += step
        index += 1
    return out


def _expected(data: bytes) -> list[list[str]]:
    text = data.decode("utf-8-sig")
    return [row for row in csv.reader(io.StringIO(text, newline="")) if row]


def _read_all(
    data: bytes,
    chunk_bytes: int,
    block_sizes: list[int],
    field_count=None,
    bounds: QuoteBounds = DEFAULT_QUOTE_BOUNDS,
):
    plan = plan_chunks(_blocks(data, block_sizes), len(data), chunk_bytes, bounds)
    records = []
    for chunk in plan.chunks:
        part = read_chunk(data[chunk.start : chunk.end], chunk.start, field_count, bounds)
        records.extend(part.records)
    return plan, records


def _written(fields: list[str]) -> str:
    # A "\r\n" writer quotes any field holding CR or LF, as well-formed CSV must.
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerow(fields)
    line = out.getvalue().removesuffix("\r\n")
    return '""' if line == "" else line


@st.composite
def csv_files(draw):
    columns = draw(st.integers(min_value=1, max_value=5))
    header = [f"col{i}" for i in range(columns)]
    rows = []
    for _ in range(draw(st.integers(min_value=0, max_value=40))):
        kind = draw(st.sampled_from(["written", "written", "long", "plain", "short"]))
        if kind == "short":  # a field short of the header: malformed, read in its place
            rows.append(("written", draw(st.lists(FIELD, min_size=1, max_size=columns))))
        elif kind == "plain":
            rows.append(("plain", draw(st.lists(PLAIN_FIELD, min_size=columns, max_size=columns))))
        elif kind == "long":
            fields = draw(st.lists(FIELD, min_size=columns, max_size=columns))
            fields[0] = draw(LONG_FIELD)
            rows.append(("written", fields))
        else:
            rows.append(("written", draw(st.lists(FIELD, min_size=columns, max_size=columns))))
    terminator = draw(st.sampled_from(["\n", "\r\n"]))
    lines = [_written(header)]
    for kind, fields in rows:
        # "plain" rows carry stray quotes inside unquoted fields: they stay literal.
        lines.append(",".join(fields) if kind == "plain" else _written(fields))
    text = terminator.join(lines) + terminator
    if draw(st.booleans()):
        text = text[: -len(terminator)]  # no newline at the end of the file
    data = text.encode("utf-8")
    if draw(st.booleans()):
        data = UTF8_BOM + data
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=csv_files(),
    chunk_bytes=st.integers(min_value=1024, max_value=6000),
    block_sizes=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=4),
)
def test_chunks_yield_exactly_the_records_of_the_whole_file(data, chunk_bytes, block_sizes):
    expected = _expected(data)
    plan, records = _read_all(data, chunk_bytes, block_sizes, bounds=WIDE_QUOTES)
    # The Arrow path (the header's field count known) and the csv path read alike, also
    # with every record off by one field (all left to csv, one by one).
    for field_count in (len(expected[0]), len(expected[0]) + 1):
        _, columnar = _read_all(data, chunk_bytes, block_sizes, field_count, WIDE_QUOTES)
        assert [(r.offset, r.end, r.error) for r in columnar] == [
            (r.offset, r.end, r.error) for r in records
        ]
        assert [list(r.fields) for r in columnar] == [r.fields for r in records]

    assert list(plan.header) == expected[0]
    assert [r.fields for r in records] == expected[1:]
    assert plan.record_count == len(expected) - 1
    # Chunks tile the data exactly, and every offset points at its own record.
    assert [c.start for c in plan.chunks[1:]] == [c.end for c in plan.chunks[:-1]]
    if plan.chunks:
        assert plan.chunks[0].start == plan.data_start and plan.chunks[-1].end == len(data)
    offsets = [r.offset for r in records]
    assert offsets == sorted(set(offsets))
    for record in records:
        alone = data[record.offset : record.end].decode("utf-8").removesuffix("\r")
        assert next(csv.reader([alone])) == record.fields


def test_arrow_reads_regular_chunks_and_declines_the_rest():
    regular = b'a,"x, ""quoted""\nline",1\nb,plain,2\nc,short\nd,"",4\n'
    chunk = _read_columnar(regular, 100, *_spans(regular, 100), 3)
    assert chunk is not None  # the fast path ran, short row included
    assert chunk.table.num_rows == 3 and [r.offset for r in chunk.others] == [
        100 + regular.index(b"c,")
    ]
    records = chunk.records()
    assert [list(r.fields) for r in records] == [
        ["a", 'x, "quoted"\nline', "1"],
        ["b", "plain", "2"],
        ["c", "short"],
        ["d", "", "4"],
    ]
    assert [r.offset for r in records] == [
        100 + regular.index(k) for k in (b"a,", b"b,", b"c,", b"d,")
    ]
    # The same chunk read whole takes the fast path with the quotes the record scan found.
    whole = read_chunk_columns(regular, 100, 3)
    assert isinstance(whole, ColumnarChunk) and whole.table.equals(chunk.table)
    for irregular in (
        b'a,ab"c,1\n',
        b'a,"ab"c,1\n',
        b"a,caf\xe9,1\n",
        b"a,b\rc,1\n",
        b"a,\x00,1\n",
        b"\xef\xbb\xbfa,b,1\n",  # Arrow would drop a leading BOM that csv keeps as text
        b"short\n\xef\xbb\xbfa,b,1\n",  # ... also where a malformed record was cut out
    ):
        assert _read_columnar(irregular, 0, *_spans(irregular, 0), 3) is None, irregular


def _spans(data: bytes, base: int):
    return _record_spans(data, base, RecordScanner().feed(data, base))


def test_chunks_are_as_few_as_the_target_allows_and_even():
    """As many chunks as the target size needs, all about the same size (the last one
    too: no small remainder), none over the target by more than a record."""
    rows = "".join(f'sku{i},"line one\nline two, with comma",{i}\n' for i in range(3000))
    data = ("sku,description,n\n" + rows).encode()
    for target in (4096, 5000, 10_000):
        plan = plan_chunks(_blocks(data, [777]), len(data), target)
        data_bytes = len(data) - plan.data_start
        count = -(-data_bytes // target)
        sizes = [c.size for c in plan.chunks]
        assert len(sizes) == count
        assert all(abs(size - data_bytes / count) < 64 for size in sizes), sizes
        assert max(sizes) < target + 64
        assert plan.record_count == 3000


def test_row_longer_than_any_window_is_one_record():
    long_value = "x" * 50_000
    data = f'sku,desc\r\na,"{long_value}\r\nstill quoted"\r\nb,short\r\n'.encode()
    plan, records = _read_all(data, 1024, [700])
    assert [r.fields[0] for r in records] == ["a", "b"]
    assert records[0].fields[1].endswith("still quoted")
    assert len(plan.chunks) == 2


def test_empty_object_is_rejected_clearly():
    with pytest.raises(HeaderError, match="empty"):
        plan_chunks([], 0, 1024)


def test_header_only_file_has_no_chunks():
    for data in (b"sku,name,url", b"sku,name,url\n", b"\xef\xbb\xbfsku,name,url\r\n"):
        plan = plan_chunks([data], len(data), 1024)
        assert plan.header == ("sku", "name", "url")
        assert plan.chunks == () and plan.record_count == 0


def test_header_with_unclosed_quote_is_rejected():
    data = b'sku,"name\nurl\n'
    with pytest.raises(HeaderError, match="unclosed quote"):
        plan_chunks([data], len(data), 1024)


def test_a_quote_that_never_closes_cuts_its_line_and_the_rest_is_read():
    data = b'sku,name\na,b\nc,"never closed\nd,e\n'
    plan, records = _read_all(data, 1024, [5])
    assert plan.unclosed_quotes == 1 and plan.record_count == 3
    assert records[0].fields == ["a", "b"]
    assert records[1].error == UNCLOSED_QUOTE and records[1].offset == data.index(b"c,")
    assert records[1].end == data.index(b"\nd,")
    assert records[2].fields == ["d", "e"]


def test_undecodable_record_is_an_encoding_error_and_neighbours_survive():
    data = b"sku,name\na,ok\nb,caf\xe9\nc,fine\n"
    _, records = _read_all(data, 1024, [4])
    assert [r.error for r in records] == [None, ENCODING_ERROR, None]
    assert records[1].offset == data.index(b"b,caf")
    assert records[2].fields == ["c", "fine"]


def test_record_with_a_nul_byte_is_an_encoding_error_and_neighbours_survive():
    # NUL is valid UTF-8 but no Postgres text holds it: refused alike on every database.
    pad = b"x" * 1100  # records longer than the smallest chunk (1 KiB)
    data = b"sku,name\na,ok" + pad + b"\nb,n\x00l" + pad + b'\nc,"quoted\nfine' + pad + b'"\n'
    for chunk_bytes in (1 << 20, 1024):  # one chunk with the NUL, or a chunk per record
        plan, records = _read_all(data, chunk_bytes, [64])
        assert len(plan.chunks) == (1 if chunk_bytes > 1024 else 3)
        assert [r.error for r in records] == [None, ENCODING_ERROR, None]
        assert records[1].offset == data.index(b"b,n")
        assert records[2].fields == ["c", "quoted\nfine" + pad.decode()]


def test_undecodable_header_is_rejected_with_its_offset():
    data = b"sku,n\xffame\na,b\n"
    with pytest.raises(HeaderError, match="byte 5"):
        plan_chunks([data], len(data), 1024)


def test_object_that_changes_size_mid_read_fails():
    data = b"sku,name\na,b\n"
    with pytest.raises(HeaderError, match="changed"):
        plan_chunks([data], len(data) + 10, 1024)


def test_lone_carriage_return_outside_quotes_is_one_malformed_record():
    # Python's csv would split "a\rb" into two broken records; we keep it whole and flag it.
    data = b"sku,name\na\rb,c\nd,e\n"
    plan, records = _read_all(data, 1024, [64])
    assert plan.record_count == 2
    assert records[0].error == MALFORMED_ROW and records[1].fields == ["d", "e"]


@pytest.mark.parametrize(
    ("data", "size", "expected"),
    [
        (b"sku,name,url\r\n1,a,b\n", None, ("sku", "name", "url")),
        (b'\xef\xbb\xbfsku,"na\nme",url\n1', None, ("sku", "na\nme", "url")),
        (b"sku,name,url", None, ("sku", "name", "url")),
        (b"sku,name,u", 100, None),
    ],
)
def test_header_from_prefix_reads_the_same_header_as_the_planner(data, size, expected):
    header = header_from_prefix(data, size or len(data))
    assert header == expected
    if size is None:
        assert plan_chunks([data], len(data), 1024).header == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\xff\xfesku,name\n", "not valid UTF-8 at byte 0"),
        (b'sku,"name,url\n1,2,3', "unclosed quote"),
        (b"\n1,2,3\n", "header line is empty"),
    ],
)
def test_header_from_prefix_rejects_unreadable_headers(data, message):
    with pytest.raises(HeaderError, match=message):
        header_from_prefix(data, len(data))


@settings(max_examples=300, deadline=None)
@given(
    text=st.lists(
        st.sampled_from(['"', '""', ",", "\n", "\r", "\r\n", "a", 'a"', ',"']), max_size=60
    ),
    prev=st.sampled_from([LF, ord(","), ord("a")]),
)
def test_loop_free_quote_scan_finds_the_fields_of_the_walk(text, prev):
    """Where quotes simply alternate the scan skips its per-quote loop; where it does,
    it finds the fields the walk finds."""
    arr = np.frombuffer("".join(text).encode(), np.uint8)
    quotes = np.flatnonzero(arr == ord('"'))
    fast = _alternating(arr, quotes, prev)
    if fast is not None:
        walked = _walk(arr, quotes.tolist(), prev)
        assert [x.tolist() if hasattr(x, "tolist") else x for x in fast] == [
            x.tolist() if hasattr(x, "tolist") else x for x in walked
        ]


@settings(max_examples=300, deadline=None)
@given(
    text=st.lists(
        st.sampled_from(['"', '""', ",", "\n", "\r", "\r\n", "a", 'a"', ',"', "\n" * 3]),
        max_size=80,
    ),
    block_sizes=st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=4),
    max_bytes=st.integers(min_value=1, max_value=20),
    max_line_feeds=st.integers(min_value=1, max_value=4),
)
def test_record_ends_do_not_depend_on_how_the_bytes_are_cut(
    text, block_sizes, max_bytes, max_line_feeds
):
    """The unclosed-quote rule looks ahead (up to its bounds) and holds record ends
    back: fed in any pieces, the scanner finds the ends and the unclosed quotes it finds
    in one piece, and so does a reader starting at any record end it found."""
    data = "".join(text).encode()
    bounds = QuoteBounds(max_bytes, max_line_feeds)

    def scan(pieces: list[bytes], base: int = 0):
        scanner = RecordScanner(bounds)
        ends, offset = [], base
        for piece in pieces:
            ends += scanner.feed(piece, offset).tolist()
            offset += len(piece)
        ends += scanner.finish().tolist()
        return ends, [(u.quote, u.cut) for u in scanner.unclosed]

    whole = scan([data])
    assert scan(_blocks(data, block_sizes)) == whole
    assert whole[0] == sorted(set(whole[0]))
    for end in whole[0]:  # a chunk starting after any record end reads on alike
        rest = scan([data[end + 1 :]], end + 1)
        assert rest[0] == [e for e in whole[0] if e > end]
        assert rest[1] == [u for u in whole[1] if u[0] > end]


def test_loop_free_quote_scan_is_taken_for_regular_quotes():
    data = b'a,"b\nc",d\n"e""f",g\nh,i\n'
    arr = np.frombuffer(data, np.uint8)
    quotes = np.flatnonzero(arr == ord('"'))
    opens, closes, _ = _alternating(arr, quotes, LF)
    assert (opens.tolist(), closes.tolist()) == ([2, 10], [6, 15])  # "" merged away
    assert RecordScanner().feed(data).tolist() == [9, 18, 22]
    stray = b'a,b"c\n'  # a quote inside an unquoted field is literal: walked
    arr = np.frombuffer(stray, np.uint8)
    assert _alternating(arr, np.flatnonzero(arr == ord('"')), LF) is None


@pytest.mark.parametrize("chunk_bytes", [0, -5, 1023, 2 * 1024**3 + 1, 10**20, 64.5, True])
def test_a_chunk_size_outside_1_kib_to_2_gib_is_refused_never_clamped(chunk_bytes):
    from catalog_pipeline.core.chunking import ChunkSizeError

    data = b"sku,name\na,b\n"
    with pytest.raises(ChunkSizeError, match="chunk size"):
        plan_chunks([data], len(data), chunk_bytes)


def test_the_smallest_and_largest_chunk_sizes_are_allowed():
    data = b"sku,name\na,b\n"
    for chunk_bytes in (1024, 2 * 1024**3):
        assert plan_chunks([data], len(data), chunk_bytes).record_count == 1


@pytest.mark.parametrize("rows", [3, 100_000])  # all in one block, or over 1 MiB
def test_bare_cr_line_ends_are_rejected_as_such(rows):
    data = b"sku,name,url\r" + b"A-1,Thing,https://x.example.com\r" * rows
    with pytest.raises(HeaderError, match="bare CR"):
        plan_chunks([data], len(data), 1 << 20)
    with pytest.raises(HeaderError, match="bare CR"):
        header_from_prefix(data[:4096], len(data))
    # CRLF and a lone CR at the very end stay fine.
    assert header_from_prefix(b"sku,name,url\r", 13) == ("sku", "name", "url")
