"""The column-wise fast path gives exactly what `validate_record` gives, row by row.

`process_chunk_bytes` reads regular chunks with Arrow and accepts the common valid shapes
as whole columns; the reference below reads the same bytes with `csv` and validates every
record with `validate_record`. Items (values, offsets, hashes, one per SKU in SKU order)
and invalid records must be identical on hostile input.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog_pipeline.core.columnar import (
    STAGE_SCHEMA,
    _at_most,
    accept_rows,
    contiguous,
    unstripped,
)
from catalog_pipeline.core.ingest import process_chunk_bytes
from catalog_pipeline.core.items import StagedItem, content_hash
from catalog_pipeline.core.reader import ColumnarChunk, read_chunk, read_chunk_columns
from catalog_pipeline.core.samples import HEADER, sample_csv
from catalog_pipeline.core.validation import attributes_json, map_header, validate_record

WHITESPACE = ["\u00a0", "\u3000", "\u2003", "\u1680", "\u0085", "\x1c", "\x1f", "\t", "\u2029"]
TEXT = [
    "",
    "x",
    "Ülla",
    "日本製",
    "café",
    "line\nbreak",
    'a 12" vinyl',
    "a, b",
    "x\u200b",  # a format character: not whitespace, kept
    "\u0301x",  # a combining mark first
    "c" * 200,
    "c" * 201,
    "é" * 201,
    *(f"{w}x" for w in WHITESPACE),
    *(f"x{w}" for w in WHITESPACE),
    " x ",
    "  ",
]
VALUES = {
    "sku": ["A-1", "a_b.c/d", "SKU-00000001", " A-1", "A 1", "", "s" * 200, "s" * 201, "Ä1"]
    + [f"A-1{w}" for w in WHITESPACE[:3]],
    "name": ["Widget", "n" * 500, "n" * 501, "é" * 500, "é" * 501, *TEXT],
    "url": [
        "https://shop.example.com/p/1?ref=scrape",
        "HTTP://EXAMPLE.COM",
        "https://example.com",
        "https://a",
        "https://k.com/",
        "https://a-.b/",
        "https://-a.com/",
        "https://example.com?q=1",
        "https://example.com#f",
        "https://localhost/x",
        "http://a.LOCALHOST",
        "http://localhost.example.com/",
        "http://notlocalhost/",
        "http://127.0.0.1/",
        "https://1.2.3.4/",
        "http://0x7f.1/",
        "http://example.com./",
        "http://example.com.:80/",
        "https://example.com:99999/",
        "https://example.com:8080/",
        "https://ex_ample.com/",
        "javascript:alert(1)",
        "httpſ://example.com/",
        "https://exa mple.com",
        "https://ｅxample.com/",
        "https://\u212aa.com/",
        "https://example.com\\@127.0.0.1/",
        "https://user@example.com/",
        "https://[::1]/",
        *(f"https://{host}/p" for host in ("xn--pple-43d.com", "XN--80ak6aa92e.com")),
        *(f"https://{host}/p" for host in ("xn--mnchen-3ya.de", "shop.xn--e1afmkfd.xn--p1ai")),
        *(f"https://{host}/p" for host in ("xn--zz.com", "axn--b.com", "Xn--abc-.com")),
        "https://example.com/" + "a" * 2028,
        "https://example.com/" + "a" * 2029,
        " https://example.com/ ",
        "https://example.com/\u00a0",
        "",
    ],
    "price": [
        "",
        "12",
        "12.50",
        "$1,234.50",
        "12.50 €",
        "€12",
        "12€",
        "£0",
        "$ 12",
        "12 $",
        "12,34.5",
        "1,000,001",
        "1000000",
        "1000000.01",
        "-3",
        "12.5.3",
        " 12 ",
        "１２",
        "٣",
        "1e3",
        "0x10",
        "1" * 400,
    ],
    "weight": [
        "",
        "350 g",
        "1.2 kg",
        "12 oz",
        "2 lb",
        "2 lbs",
        "800",
        "0",
        "0 kg",
        "-3 kg",
        "3 KG",
        "3kg",
        "3  kg",
        "3\tkg",
        "3 stone",
        "1,200 g",
        "٣ g",
        "3 \u212ag",
        "3 g ",
    ],
    "weight_unit": ["", "kg", "KG", " kg", "stone", "\u212ag", "oz\u00a0"],
    "play_count": ["", "0", "1,234", "1234", "007", "12,34", "9" * 18, "9" * 19, "9" * 20]
    + ["-1", "1.5", "٣", " 12", "1,234,567,890,123,456"],
    "image_urls": [
        "",
        "a.jpg",
        "https://img.example.com/1/0.jpg|https://img.example.com/1/1.jpg",
        "a.jpg; b.jpg",
        " |a| ",
        "|",
        'a"b',
        "a\\b",
        "é.jpg",
        "a\tb",
        "a\u00a0b",
        "a\nb",
    ],
}
OPTIONAL = ["brand", "category", "description", "currency", "availability", "external_id"]
COLUMNS = ["sku", "name", "url", "price", "weight", "weight_unit", "play_count", "image_urls"]
ALIASES = {"name": "title", "url": "product_url", "image_urls": "images", "play_count": "plays"}


@st.composite
def csv_files(draw) -> tuple[list[str], list[list[str]]]:
    optional = draw(st.lists(st.sampled_from(COLUMNS[3:] + OPTIONAL), unique=True))
    columns = draw(st.permutations(["sku", "name", "url", *optional]))
    header = [ALIASES.get(c, c) if draw(st.booleans()) else c for c in columns]
    if draw(st.booleans()):
        header.append("ignored")
        columns.append("ignored")
    skus = st.sampled_from(["A-1", "B-2", "C-3"]) | st.sampled_from(VALUES["sku"])
    rows = []
    for _ in range(draw(st.integers(1, 25))):
        row = [draw(skus if c == "sku" else st.sampled_from(VALUES.get(c, TEXT))) for c in columns]
        if draw(st.integers(0, 20)) == 0:
            row.append("extra")  # a field-count mismatch, read by csv in place
        rows.append(row)
    return header, rows


def _encode(header: list[str], rows: list[list[str]]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def _reference(data: bytes, base: int, mapping):
    """Every record through `csv` and `validate_record`, the later record of a SKU kept."""
    latest, invalid, valid = {}, [], 0
    for record in read_chunk(data, base).records:  # no field count: the csv path
        if record.error is not None:
            invalid.append((record.offset, (record.error,)))
            continue
        item, reasons = validate_record(record.fields, mapping)
        if item is None:
            invalid.append((record.offset, reasons))
            continue
        valid += 1
        extras = attributes_json(record.fields, mapping.extras) if mapping.extras else None
        staged = StagedItem(item, record.offset, extras)
        latest[item.sku] = (*staged.as_row(), content_hash(item))
    return [latest[sku] for sku in sorted(latest)], invalid, valid


def _check_same(data: bytes, header: list[str]) -> tuple[int, int]:
    mapping = map_header(header)
    base = data.index(b"\n") + 1
    body = data[base:]
    outcome = process_chunk_bytes(body, base, mapping)
    expected_items, expected_invalid, expected_valid = _reference(body, base, mapping)
    got = [tuple(row.values()) for row in outcome.items.to_pylist()]
    assert outcome.items.column_names == [*STAGE_SCHEMA.names, "content_hash"]
    assert got == expected_items
    assert [(r.byte_offset, r.reasons) for r in outcome.invalid] == expected_invalid
    assert outcome.valid_rows == expected_valid
    chunk = read_chunk_columns(body, base, mapping.field_count)
    accepted = accept_rows(chunk.table, mapping)[0] if isinstance(chunk, ColumnarChunk) else []
    return int(np.sum(accepted)), expected_valid


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(csv_files())
def test_fast_path_matches_validate_record(file):
    header, rows = file
    _check_same(_encode(header, rows), header)


def test_fast_path_takes_the_common_rows_of_a_realistic_file():
    data = sample_csv(3_000, seed=11)
    accepted, valid = _check_same(data, list(HEADER))
    assert valid > 2_700
    assert accepted == valid  # every valid row of the generator's shapes is taken


def test_fast_path_declines_what_only_the_rules_can_judge():
    header = ["sku", "name", "url", "price"]
    rows = [
        ["A-1", "ok", "https://example.com/", "12.50 €"],  # taken
        ["A-2", "ok", "http://127.0.0.1/", "1"],  # an IP literal: the rules decide
        ["A-3", "ok", "httpſ://example.com/", "1"],  # RE2 would fold ſ to s
        ["A-4", "ok\u00a0", "https://example.com/", "1"],  # strip() would change it
        ["A-5", "ok", "https://example.com/", "１２"],  # not ASCII digits
        ["A-6", "ok", "https://xn--mnchen-3ya.de/", "1"],  # punycode: the IDN rules decide
        ["A-7", "ok", "https://xn--pple-43d.com/", "1"],
    ]
    data = _encode(header, rows)
    mapping = map_header(header)
    base = data.index(b"\n") + 1
    chunk = read_chunk_columns(data[base:], base, mapping.field_count)
    assert isinstance(chunk, ColumnarChunk)
    accepted, _ = accept_rows(chunk.table, mapping)
    assert accepted.tolist() == [True, False, False, False, False, False, False]
    _check_same(data, header)


def test_unstripped_agrees_with_str_strip_for_every_whitespace_character():
    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    values = [
        "",
        "x",
        "é",
        "日本",
        "\u0301",
        *[f"{s}x" for s in spaces],
        *[f"x{s}" for s in spaces],
    ]
    values += [s for s in spaces] + [f"é{s}" for s in spaces] + [f"{s}é" for s in spaces]
    column = pa.array(values)
    expected = [bool(v) and v.strip() == v for v in values]
    assert unstripped(column).tolist() == expected


def test_length_limit_counts_code_points_not_bytes():
    """Values over the limit in bytes but not in code points pass; a slice of a column
    (non-zero offset) is measured on its own values."""
    values = ["a" * 5, "a" * 6, "é" * 5, "é" * 6, "日本語日本", "", "💿" * 5 + "x"]
    column = pa.array(["padding", *values]).slice(1)
    assert _at_most(column, 5).tolist() == [len(v) <= 5 for v in values]


def test_contiguous_keeps_a_single_chunk_and_joins_several():
    one = pa.chunked_array([pa.array(["ab", "c"])])
    assert contiguous(one).buffers()[2].address == one.chunk(0).buffers()[2].address
    several = pa.chunked_array([pa.array(["ab"]), pa.array(["c", None])])
    assert contiguous(several).to_pylist() == ["ab", "c", None]
    assert contiguous(pa.chunked_array([], pa.string())).to_pylist() == []


# Hosts the columnar URL shape would take if it did not look for "xn--": valid IDNs,
# homographs (аpple, аррӏе, hxοample), undecodable labels, and "xn--" that is not a prefix.
PUNYCODE_LABELS = [
    "xn--pple-43d",
    "xn--80ak6aa92e",
    "xn--hxample-9of",
    "xn--mnchen-3ya",
    "xn--e1afmkfd",
    "xn--p1ai",
    "xn--r8jz45g",
    "xn--zz",
    "xn--abc-",
    "xn--",
    "XN--PPLE-43D",
    "Xn--Mnchen-3ya",
    "axn--b",
]
ASCII_LABELS = ["shop", "example", "com", "de", "a-b", "x1"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.lists(st.sampled_from(PUNYCODE_LABELS + ASCII_LABELS), min_size=1, max_size=4)
        .map(".".join)
        .filter(lambda host: host[0].isalpha()),
        min_size=1,
        max_size=12,
    )
)
def test_fast_path_and_rules_agree_on_punycode_hosts(hosts: list[str]) -> None:
    header = ["sku", "name", "url"]
    rows = [[f"S-{index}", "ok", f"https://{host}/p/{index}"] for index, host in enumerate(hosts)]
    data = _encode(header, rows)
    _check_same(data, header)
    mapping = map_header(header)
    base = data.index(b"\n") + 1
    chunk = read_chunk_columns(data[base:], base, mapping.field_count)
    assert isinstance(chunk, ColumnarChunk)
    accepted = accept_rows(chunk.table, mapping)[0]
    for host, taken in zip(hosts, accepted.tolist(), strict=True):
        if "xn--" in host.lower():
            assert not taken  # every punycode host goes to the rules, valid or not
        else:  # and the plain ones are still taken
            assert taken == (validate_record(["S", "ok", f"https://{host}/"], mapping)[1] == ())
