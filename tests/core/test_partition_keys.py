"""Partition keys: an object key percent-encoded where Dagster mishandles characters
(`,` `|` `[` `]`, control characters, runs of three dots) and `%`, reversibly."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from catalog_pipeline.core.naming import decode_partition_key, encode_partition_key

TRICKY = st.text(alphabet=st.sampled_from(list("ab/._-,|[]%é\x00\x1f\x7f ")), max_size=12)
KEYS = st.one_of(TRICKY, st.text(max_size=12))


@given(KEYS)
def test_encoding_round_trips_and_leaves_no_character_dagster_mishandles(key: str):
    encoded = encode_partition_key(key)
    assert decode_partition_key(encoded) == key
    assert not set(encoded) & set(",|[]")
    assert "..." not in encoded
    assert all(0x20 <= ord(char) != 0x7F for char in encoded)
    assert encoded == reference_encoding(key)


def reference_encoding(key: str) -> str:
    """Character by character, as the encoding is specified."""
    out = "".join(
        "".join(f"%{byte:02X}" for byte in char.encode())
        if char in ",|[]%" or ord(char) < 0x20 or ord(char) == 0x7F
        else char
        for char in key
    )
    return re.sub(r"\.{3,}", lambda run: "%2E" * len(run.group(0)), out)


def test_plain_keys_are_their_own_partition_key():
    for key in ("shop_2026-01-01T06-00-00.csv", "scrapes/a b/c.csv.gz", "x..y.csv", "é.csv"):
        assert encode_partition_key(key) == key


def test_each_mishandled_character_is_encoded():
    assert encode_partition_key("a,b|c[d]e%f") == "a%2Cb%7Cc%5Bd%5De%25f"
    assert encode_partition_key("a\x00\nb\x7f") == "a%00%0Ab%7F"
    assert encode_partition_key("x...y....z") == "x%2E%2E%2Ey%2E%2E%2E%2Ez"


def test_one_mishandled_character_in_a_plain_key_is_encoded():
    for char in ",|[]%\x00\x1f\x7f":
        assert encode_partition_key(f"shop{char}.csv") == reference_encoding(f"shop{char}.csv")
        assert decode_partition_key(encode_partition_key(f"shop{char}.csv")) == f"shop{char}.csv"
    assert encode_partition_key("shop...csv") == "shop%2E%2E%2Ecsv"
