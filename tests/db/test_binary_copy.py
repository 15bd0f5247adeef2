"""The binary COPY stream is the same however many rows each piece frames."""

from __future__ import annotations

import struct

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from catalog_pipeline.db.binary_copy import SIGNATURE, TRAILER, copy_payload

ROWS = st.lists(
    st.tuples(
        st.one_of(st.none(), st.text()),
        st.one_of(st.none(), st.floats(allow_nan=False)),
        st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    ),
    max_size=20,
)


def _table(rows) -> pa.Table:
    return pa.table(
        {
            "text": pa.array([row[0] for row in rows], pa.string()),
            "number": pa.array([row[1] for row in rows], pa.float64()),
            "count": pa.array([row[2] for row in rows], pa.int64()),
        }
    )


@given(rows=ROWS, rows_per_piece=st.integers(min_value=1, max_value=6))
def test_pieces_make_the_same_stream_as_one_piece(rows, rows_per_piece):
    table = _table(rows)
    whole = b"".join(copy_payload(table, rows_per_piece=len(rows) + 1))
    assert b"".join(copy_payload(table, rows_per_piece)) == whole
    assert whole.startswith(SIGNATURE) and whole.endswith(TRAILER)


def test_stream_frames_each_field():
    table = _table([("é", 1.5, None), (None, None, 7)])
    body = b"".join(copy_payload(table, rows_per_piece=1))[len(SIGNATURE) : -len(TRAILER)]
    assert body == (
        b"\x00\x03"
        + b"\x00\x00\x00\x02"
        + "é".encode()
        + b"\x00\x00\x00\x08"
        + struct.pack("!d", 1.5)
        + b"\xff\xff\xff\xff"
        + b"\x00\x03"
        + b"\xff\xff\xff\xff"
        + b"\xff\xff\xff\xff"
        + b"\x00\x00\x00\x08"
        + (7).to_bytes(8, "big")
    )
