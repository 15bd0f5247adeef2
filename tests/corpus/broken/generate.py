"""Write the broken-input corpus (run once; the files and `expected.json` are committed).

Each file pairs one kind of broken or hostile input with good rows around it, so its
expected outcome says both what is refused and that nothing valid is lost.
`python tests/corpus/broken/generate.py` rewrites them all.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
HEADER = b"sku,name,url,description"


def good(index: int, prefix: str = "SQ") -> bytes:
    return b"%s-%d,Thing %d,https://shop.example.com/p/%d,fine" % (
        prefix.encode(),
        index,
        index,
        index,
    )


def rows(count: int, prefix: str = "SQ") -> list[bytes]:
    return [good(i, prefix) for i in range(count)]


def lines(*parts: bytes, end: bytes = b"\n") -> bytes:
    return end.join(parts) + end


CASES: dict[str, tuple[bytes, dict]] = {}


def case(name: str, data: bytes, **expected) -> None:
    CASES[name] = (data, expected)


body = rows(1000, "SQ")
body[500] = b'SQ-500,"Thing 500,https://shop.example.com/p/500,fine'
case(
    "stray_quote_row_500.csv",
    lines(HEADER, *body),
    status="completed",
    rows_valid=999,
    rows_invalid=1,
    reasons={"unclosed_quote": 1},
)
body = rows(20, "QQ")
# A stray quote whose row has no other quote: it would run into row 6 (whose first quote
# opens a field, mid-way for the stray one): unclosed, cut at its line end.
body[5] = b'QQ-5,"Thing 5 with comma,https://shop.example.com/p/5,plain'
body[6] = b'QQ-6,"Thing 6, quoted",https://shop.example.com/p/6,"two\nlines"'
# A stray quote closed on its own line (by the next quote of the row): csv's reading, a
# row with the wrong field count.
body[10] = b'QQ-10,"Thing 10,https://shop.example.com/p/10,"said ""hi"""'
case(
    "stray_quote_among_quoted_fields.csv",
    lines(HEADER, *body),
    status="completed",
    rows_valid=18,
    rows_invalid=2,
    reasons={"unclosed_quote": 1, "malformed_row": 1},
)
case(
    "unclosed_quote_at_end.csv",
    lines(HEADER, *rows(5, "EQ")) + b'EQ-5,"Thing 5,https://shop.example.com/p/5,fine',
    status="completed",
    rows_valid=5,
    rows_invalid=1,
    reasons={"unclosed_quote": 1},
)
case(
    "field_too_long.csv",
    lines(
        HEADER,
        good(0, "FL"),
        b"FL-1,Big,https://shop.example.com/p/1," + b"x" * 140_000,
        good(2, "FL"),
    ),
    status="completed",
    rows_valid=2,
    rows_invalid=1,
    reasons={"field_too_long": 1},
)
case(
    "cr_line_ends.csv",
    lines(HEADER, *rows(3, "CR"), end=b"\r"),
    status="rejected",
    rejected_reason="bare CR",
)
case(
    "crlf_with_bom.csv",
    b"\xef\xbb\xbf" + lines(HEADER, *rows(4, "BM"), end=b"\r\n"),
    status="completed",
    rows_valid=4,
    rows_invalid=0,
    reasons={},
)
case(
    "duplicate_sku_column.csv",
    lines(b"sku,name,url,SKU", b"DU-1,Thing,https://shop.example.com/p/1,DU-2"),
    status="rejected",
    rejected_reason="'sku' and 'SKU' (columns 1, 4)",
)
case(
    "missing_url_column.csv",
    lines(b"sku,name,description", b"MU-1,Thing,fine"),
    status="rejected",
    rejected_reason="missing required column(s) 'url'",
)
case("empty.csv", b"", status="rejected", rejected_reason="empty")
case(
    "header_only.csv",
    lines(HEADER),
    status="completed",
    rows_valid=0,
    rows_invalid=0,
    reasons={},
)
case(
    "header_unclosed_quote.csv",
    lines(b'sku,"name,url,description', *rows(3, "HQ")),
    status="rejected",
    rejected_reason="unclosed quote",
)
case(
    "nul_byte_and_latin1.csv",
    lines(
        HEADER,
        good(0, "NB"),
        b"NB-1,Nul\x00here,https://shop.example.com/p/1,x",
        b"NB-2,Caf\xe9,https://shop.example.com/p/2,x",
        good(3, "NB"),
    ),
    status="completed",
    rows_valid=2,
    rows_invalid=2,
    reasons={"encoding_error": 2},
)
case(
    "short_long_and_bare_cr_rows.csv",
    lines(
        HEADER,
        good(0, "SL"),
        b"SL-1,short",
        b"SL-2,Thing,https://shop.example.com/p/2,x,extra",
        b"SL-3,Bare\rCR,https://shop.example.com/p/3,x",
        good(4, "SL"),
    ),
    status="completed",
    rows_valid=2,
    rows_invalid=3,
    reasons={"malformed_row": 3},
)
case(
    "blank_lines.csv",
    lines(HEADER, good(0, "BL"), b"", b"\r", good(1, "BL"), b""),
    status="completed",
    rows_valid=2,
    rows_invalid=0,
    reasons={},
)
case(
    "hostile_urls.csv",
    lines(
        HEADER,
        good(0, "HU"),
        b"HU-1,Loopback,http://127.0.0.1/admin,x",
        b"HU-2,Private,http://10.0.0.8/,x",
        b"HU-3,Homograph,http://xn--pple-43d.com/,x",
        b"HU-4,Script,javascript:alert(1),x",
        b"HU-5,Munich,https://xn--mnchen-3ya.de/p,x",
    ),
    status="completed",
    rows_valid=2,
    rows_invalid=4,
    reasons={"url_private_host": 2, "url_confusable_host": 1, "url_bad_scheme": 1},
)
case(
    "sql_injection.csv",
    lines(
        HEADER,
        b'SI-1,"Robert\'); DROP TABLE catalog_items;--",https://shop.example.com/p/1,x',
        good(2, "SI"),
    ),
    status="completed",
    rows_valid=2,
    rows_invalid=0,
    reasons={},
)


def main() -> None:
    expected = {}
    for name, (data, outcome) in CASES.items():
        (HERE / name).write_bytes(data)
        expected[name] = outcome
    (HERE / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
