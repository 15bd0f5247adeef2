"""PostgreSQL's binary COPY format, built from Arrow columns without a Python object per
value.

A binary COPY stream is a signature, then per row a 16-bit field count and per field a
32-bit length (-1 for NULL) followed by that many bytes, then a -1 trailer. A text
column becomes two Arrow binary arrays, its lengths and its values as they are (a cast,
no copy); a number column one array of framed fields. One element-wise join of all of
them lays the rows out back to back in one buffer, which is sent as it is: each byte of
text is copied once. psycopg's `write_row` does the same work per value in Python calls.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog_pipeline.core.columnar import contiguous, value_offsets

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
TRAILER = struct.pack("!h", -1)
_NULL = struct.pack("!i", -1)

# Arrow type -> big-endian numpy type of the PostgreSQL binary form (float8, int8, int4).
_FIXED = {
    pa.float64(): np.dtype(">f8"),
    pa.int64(): np.dtype(">i8"),
    pa.int32(): np.dtype(">i4"),
}


ROWS_PER_PIECE = 8192


def copy_payload(table: pa.Table, rows_per_piece: int = ROWS_PER_PIECE) -> Iterator[memoryview]:
    """The binary COPY stream of `table`'s rows, in pieces to write in order.

    Text columns go as text (valid UTF-8 in Arrow), float64 as float8, int64 as int8 and
    int32 as int4; the COPY's column list must name the same columns in the same order.
    Rows are framed `rows_per_piece` at a time: each piece's memory is reused by the
    next instead of a whole chunk's rows being laid out twice at once (fresh memory
    costs a page fault per 4 KiB).
    """
    yield memoryview(SIGNATURE)
    count = struct.pack("!h", table.num_columns)
    for start in range(0, table.num_rows, rows_per_piece):
        piece = table.slice(start, rows_per_piece)
        fields = [part for i in range(piece.num_columns) for part in _fields(piece.column(i))]
        # A NULL text value joins as nothing: its length field already says -1.
        rows = pc.binary_join_element_wise(
            count, *fields, b"", null_handling="replace", null_replacement=b""
        )
        offsets = value_offsets(rows)
        begin, end = int(offsets[0]), int(offsets[-1])
        yield memoryview(rows.buffers()[2])[begin:end]
    yield memoryview(TRAILER)


def _fields(column: pa.ChunkedArray | pa.Array) -> list[pa.Array]:
    """The binary arrays that lay out a column's COPY fields when joined in order: for
    text, each value's length (-1 for NULL) and then the value itself; for a number, its
    length and big-endian value in one fixed-width field (or -1 for NULL)."""
    column = contiguous(column)
    rows = len(column)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        lengths = pc.fill_null(pc.binary_length(column), -1).to_numpy().astype(">i4")
        return [_fixed_width_binary(lengths.tobytes(), rows, 4), column.cast(pa.binary())]
    dtype = _FIXED.get(column.type)
    if dtype is None:
        raise TypeError(f"no binary COPY form for Arrow type {column.type}")
    record = np.dtype([("length", ">i4"), ("value", dtype)])
    packed = np.empty(rows, dtype=record)
    packed["length"] = dtype.itemsize
    packed["value"] = pc.fill_null(column, 0).to_numpy()
    framed = _fixed_width_binary(packed.tobytes(), rows, record.itemsize)
    if column.null_count:
        framed = pc.if_else(column.is_null(), pa.scalar(_NULL, pa.binary()), framed)
    return [framed]


def _fixed_width_binary(data: bytes, rows: int, width: int) -> pa.Array:
    offsets = np.arange(0, (rows + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(
        pa.binary(), rows, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)]
    )
