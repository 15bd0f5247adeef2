"""The common valid rows of a chunk, validated as whole Arrow columns.

`validation.validate_record` is the contract and stays the only judge of an invalid row.
This module accepts a row only when every one of its fields has a shape on which that
function's answer is certain (a plain SKU, a URL with a letter-first DNS host that holds
no `xn--` punycode, a price like `$1,234.50` or `12.50 €`, …) and computes exactly the
values it would store. Every other row, valid or not, is declined and goes through
`validate_record` unchanged, so this can only take rows off the per-row path; it never
decides a reason or a different value (the differential tests compare both on hostile
input). Punycode hosts are declined because only the rules decode them and judge the
homograph check (`core.confusables`).

Three facts the shapes rely on:
- `str.strip()` changes a value exactly when its first or last character is one of the
  29 characters `str.isspace()` accepts; those are compared byte-wise here (the list is
  tested against the running Python).
- Arrow's regular expressions (RE2) are written here with explicit ASCII classes and no
  case-insensitive flag: RE2's case folding matches `ſ` to `s` and `K` (Kelvin) to `k`,
  Python's ASCII rules do not.
- Arrow's string-to-number casts are correctly rounded, as `float()` is, and `utf8_length`
  counts code points, as `len()` does.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog_pipeline.core.validation import (
    GRAMS_PER_UNIT,
    MAX_BRAND_LENGTH,
    MAX_CATEGORY_LENGTH,
    MAX_DESCRIPTION_LENGTH,
    MAX_NAME_LENGTH,
    MAX_PRICE,
    MAX_URL_LENGTH,
    HeaderMapping,
)

# Stored item columns of one chunk, in `catalog_pipeline.db.ingest` stage order.
STAGE_SCHEMA = pa.schema(
    [
        ("sku", pa.string()),
        ("name", pa.string()),
        ("brand", pa.string()),
        ("category", pa.string()),
        ("description", pa.string()),
        ("price", pa.float64()),
        ("currency", pa.string()),
        ("url", pa.string()),
        ("image_urls", pa.string()),
        ("availability", pa.string()),
        ("weight_grams", pa.float64()),
        ("play_count", pa.int64()),
        ("external_id", pa.string()),
        ("source_offset", pa.int64()),
        ("attributes", pa.string()),  # JSON of the columns outside the contract, or null
    ]
)

# The characters `str.isspace()` accepts: ASCII by byte value, the others as UTF-8.
_ASCII_SPACE = np.zeros(256, dtype=bool)
_ASCII_SPACE[[0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20]] = True
_WIDE_SPACES = tuple(
    chr(code).encode()
    for code in (0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000)
)
_NUMBER = r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?"
_SKU = r"^[A-Za-z0-9_./-]{1,200}$"
_PRICE = rf"^[$€£]?{_NUMBER}(?: ?[$€£])?$"
_WEIGHT = rf"^(?P<number>{_NUMBER}) ?(?P<unit>[A-Za-z]*)$"
_PLAY_COUNT = r"^(?:[0-9]{1,3}(?:,[0-9]{3}){1,5}|[0-9]{1,18})$"  # at most 18 digits: < 2**63
# What `validation._url_reasons` passes without a second look: http(s), a DNS name whose
# first label starts with a letter (never an IP literal), no port, no trailing dot.
_PLAIN_URL = r"^[Hh][Tt][Tt][Pp][Ss]?://[A-Za-z][A-Za-z0-9-]*(?:\.[A-Za-z0-9-]+)*(?:[/?#]|$)"
# Plain URLs the rules must still judge: localhost names, and hosts with `xn--` anywhere
# (punycode, decoded and checked for homographs by `core.confusables`).
_DECLINED_HOST_URL = (
    r"^[Hh][Tt][Tt][Pp][Ss]?://(?:"
    r"(?:[A-Za-z0-9-]+\.)*[Ll][Oo][Cc][Aa][Ll][Hh][Oo][Ss][Tt](?:[/?#]|$)"
    r"|[A-Za-z0-9.-]*[Xx][Nn]--"
    r")"
)
# Image lists of printable ASCII without quotes or backslashes: their JSON needs no escapes.
_PLAIN_IMAGES = r"^[ !#-\[\]-~]*$"
_IMAGE_SEPARATORS = " |;"
_UNITS = pa.array(list(GRAMS_PER_UNIT))
_FACTORS = pa.array(list(GRAMS_PER_UNIT.values()), pa.float64())


def contiguous(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """`column` as one array. `combine_chunks` copies even a single chunk (a whole
    chunk's text, in fresh memory); one chunk is returned as it is."""
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


def _matches(column: pa.Array, pattern: str) -> np.ndarray:
    return pc.match_substring_regex(column, pattern).to_numpy(zero_copy_only=False)


def unstripped(column: pa.Array) -> np.ndarray:
    """True where a value is not empty and `str.strip()` leaves it as it is."""
    offsets, data = _string_buffers(column)
    starts, ends = offsets[:-1], offsets[1:]
    lengths = ends - starts
    result = lengths > 0
    if not len(data):
        return result
    last = len(data) - 1
    first_bytes = data[np.minimum(starts, last)]
    last_bytes = data[np.maximum(ends - 1, 0)]
    result &= ~_ASCII_SPACE[first_bytes] & ~_ASCII_SPACE[last_bytes]
    for at_start, edge_bytes in ((True, first_bytes), (False, last_bytes)):
        wide = np.flatnonzero(result & (edge_bytes >= 0x80))
        for space in _WIDE_SPACES if len(wide) else ():
            rows = wide[lengths[wide] >= len(space)]
            begins = starts[rows] if at_start else ends[rows] - len(space)
            same = np.ones(len(rows), dtype=bool)
            for index, byte in enumerate(space):
                same &= data[begins + index] == byte
            result[rows[same]] = False
    return result


def value_offsets(column: pa.Array) -> np.ndarray:
    """Where each value of a string or binary array (large or not) starts in its data
    buffer, plus where the last one ends: one more offset than values, the array's own
    slice of them."""
    wide = pa.types.is_large_string(column.type) or pa.types.is_large_binary(column.type)
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int64 if wide else np.int32)
    return offsets[column.offset : column.offset + len(column) + 1]


def _string_buffers(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The offsets (one per value, plus the end) and the bytes of a string array."""
    data = column.buffers()[2]
    values = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
    return value_offsets(column), values


def _at_most(column: pa.Array, limit: int) -> np.ndarray:
    """True where a value has at most `limit` code points. A value of at most `limit`
    bytes has (every code point takes at least one byte): only longer ones are counted."""
    offsets, _ = _string_buffers(column)
    result = np.diff(offsets) <= limit
    longer = np.flatnonzero(~result)
    if len(longer):
        counted = pc.utf8_length(column.take(pa.array(longer)))
        result[longer] = pc.less_equal(counted, limit).to_numpy(zero_copy_only=False)
    return result


def _or_empty(column: pa.Array, value: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """`value` with NULL where `column` is empty, sharing its buffers."""
    offsets, _ = _string_buffers(column)
    empty = offsets[1:] == offsets[:-1]
    return empty, _with_nulls(value, empty)


def _with_nulls(value: pa.Array, empty: np.ndarray) -> pa.Array:
    if not empty.any():
        return value
    return pc.if_else(pa.array(empty), pa.scalar(None, value.type), value)


def _optional_text(column: pa.Array, limit: int | None) -> tuple[np.ndarray, pa.Array]:
    """`value.strip() or None`, accepted when stripping changes nothing."""
    empty, value = _or_empty(column, column)
    accepted = empty | unstripped(column)
    if limit is not None:
        accepted &= _at_most(column, limit)
    return accepted, value


def _number(text: pa.Array, shaped: np.ndarray, kind: pa.DataType) -> pa.Array:
    """The value of each shaped number (commas and currency signs dropped), 0 elsewhere.

    A shaped value holds digits, commas and one dot, with at most a currency sign and a
    space at either end: trimming those ends and dropping commas leaves the number (two
    literal passes, a quarter of the time of one regex replacement)."""
    kept = pc.utf8_trim(pc.if_else(pa.array(shaped), text, "0"), "$€£ ")
    return pc.cast(pc.replace_substring(kept, ",", ""), kind)


def _price(column: pa.Array) -> tuple[np.ndarray, pa.Array]:
    shaped = _matches(column, _PRICE)
    value = _number(column, shaped, pa.float64())
    within = pc.less_equal(value, MAX_PRICE).to_numpy(zero_copy_only=False)
    empty, value = _or_empty(column, value)
    return empty | (shaped & within), value


def _play_count(column: pa.Array) -> tuple[np.ndarray, pa.Array]:
    shaped = _matches(column, _PLAY_COUNT)
    empty, value = _or_empty(column, _number(column, shaped, pa.int64()))
    return empty | shaped, value


def _weight(column: pa.Array, unit_column: pa.Array | None) -> tuple[np.ndarray, pa.Array]:
    """`<number> [unit]` in grams; a suffix unit wins over the unit column, then grams."""
    shaped = _matches(column, _WEIGHT)
    parts = pc.extract_regex(pc.if_else(pa.array(shaped), column, "0"), _WEIGHT)
    number, unit = parts.field("number"), parts.field("unit")
    if unit_column is not None:
        # An ASCII unit column lowercases alike everywhere; anything else is declined.
        usable = _matches(unit_column, r"^[A-Za-z]*$")
        suffixed = pc.not_equal(unit, "").to_numpy(zero_copy_only=False)
        shaped &= suffixed | usable
        unit = pc.if_else(pa.array(suffixed), unit, unit_column)
    unit = pc.if_else(pc.equal(unit, ""), "g", pc.ascii_lower(unit))
    factor = pc.take(_FACTORS, pc.index_in(unit, value_set=_UNITS))
    grams = pc.multiply(_number(number, shaped, pa.float64()), factor)
    positive = pc.greater(pc.fill_null(grams, 0.0), 0.0).to_numpy(zero_copy_only=False)
    empty, grams = _or_empty(column, grams)
    return empty | (shaped & positive), grams


def _image_urls(column: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """The JSON list `image_urls_json` stores, for lists that need no JSON escapes."""
    accepted = _matches(column, _PLAIN_IMAGES)
    trimmed = pc.utf8_trim(column, _IMAGE_SEPARATORS)
    joined = pc.replace_substring_regex(trimmed, r"[ |;]+", '", "')
    listed = pc.binary_join_element_wise('["', joined, '"]', "")
    return accepted, _or_empty(trimmed, listed)[1]


def accept_rows(table: pa.Table, mapping: HeaderMapping) -> tuple[np.ndarray, pa.Table]:
    """Which rows of `table` (one string column per header field) are certainly valid,
    and the stage columns of every row (meaningless where not accepted).

    Returns a boolean mask and a table in `STAGE_SCHEMA` order without `source_offset`
    and `attributes`.
    """
    rows = table.num_rows
    columns = {name: contiguous(table.column(index)) for name, index in _fields(mapping)}
    accepted = np.ones(rows, dtype=bool)

    def keep(check: np.ndarray, value: pa.Array) -> pa.Array:
        nonlocal accepted
        accepted &= check
        return value

    sku = keep(_matches(columns["sku"], _SKU), columns["sku"])
    name = columns["name"]
    keep(unstripped(name) & _at_most(name, MAX_NAME_LENGTH), name)
    url = columns["url"]
    plain = _matches(url, _PLAIN_URL) & ~_matches(url, _DECLINED_HOST_URL)
    keep(plain & unstripped(url) & _at_most(url, MAX_URL_LENGTH), url)

    def optional(column: str, limit: int | None = None) -> pa.Array:
        if column not in columns:
            return pa.nulls(rows, pa.string())
        return keep(*_optional_text(columns[column], limit))

    def parsed(column: str, parse, kind: pa.DataType, *extra) -> pa.Array:
        if column not in columns:
            return pa.nulls(rows, kind)
        return keep(*parse(columns[column], *extra))

    values = {
        "sku": sku,
        "name": name,
        "brand": optional("brand", MAX_BRAND_LENGTH),
        "category": optional("category", MAX_CATEGORY_LENGTH),
        "description": optional("description", MAX_DESCRIPTION_LENGTH),
        "price": parsed("price", _price, pa.float64()),
        "currency": optional("currency"),
        "url": url,
        "image_urls": parsed("image_urls", _image_urls, pa.string()),
        "availability": optional("availability"),
        "weight_grams": parsed("weight", _weight, pa.float64(), columns.get("weight_unit")),
        "play_count": parsed("play_count", _play_count, pa.int64()),
        "external_id": optional("external_id"),
    }
    value_schema = STAGE_SCHEMA.remove(len(STAGE_SCHEMA) - 1).remove(len(STAGE_SCHEMA) - 2)
    return accepted, pa.table(values, schema=value_schema)


def _fields(mapping: HeaderMapping) -> list[tuple[str, int]]:
    return sorted(mapping.positions.items(), key=lambda pair: pair[1])
