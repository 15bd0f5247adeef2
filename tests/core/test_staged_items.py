"""The stored form of a valid item: image URL JSON and content hash."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from catalog_pipeline.core.items import _HASHED as HASHED
from catalog_pipeline.core.items import content_hash, image_urls_json, with_content_hash
from catalog_pipeline.core.validation import Item, map_header, validate_record

MAPPING = map_header(["sku", "name", "url", "brand", "category", "description", "images"])


@given(st.lists(st.text(max_size=30), max_size=5))
def test_image_urls_json_is_exactly_json_dumps(urls):
    expected = json.dumps(urls) if urls else None
    assert image_urls_json(tuple(urls)) == expected


def test_image_urls_json_common_and_escaped_shapes():
    plain = ("https://img.example/a.jpg?w=1&h=2", "https://img.example/b c.png")
    assert image_urls_json(plain) == json.dumps(list(plain))
    for odd in ('https://x/"q".jpg', "https://x/a\\b.jpg", "https://x/é.jpg", "a\tb"):
        assert image_urls_json((odd,)) == json.dumps([odd])
    assert image_urls_json(()) is None


def test_content_hash_covers_name_brand_category_description_only():
    item, _ = validate_record(
        ["A-1", "Tent", "https://a.example/", "Nordwand", "outdoor", "Dome, 2p", ""], MAPPING
    )
    payload = b"Tent\x1fNordwand\x1foutdoor\x1fDome, 2p"
    assert content_hash(item) == hashlib.blake2b(payload, digest_size=16).hexdigest()
    bare, _ = validate_record(["A-1", "Tent", "https://a.example/", "", "", "", ""], MAPPING)
    assert content_hash(bare) == hashlib.blake2b(b"Tent\x1f\x1f\x1f", digest_size=16).hexdigest()


@given(
    rows=st.lists(
        st.tuples(st.text(min_size=1), *(st.one_of(st.none(), st.text()) for _ in range(3))),
        max_size=12,
    ),
    rows_per_piece=st.integers(min_value=1, max_value=5),
)
def test_content_hash_column_is_content_hash_of_each_row_in_any_pieces(rows, rows_per_piece):
    table = pa.table(
        {name: pa.array([row[i] for row in rows], pa.string()) for i, name in enumerate(HASHED)}
    )
    expected = [
        content_hash(
            Item("s", name, "u", brand, category, description, *[None] * 3, (), *[None] * 3)
        )
        for name, brand, category, description in rows
    ]
    column = with_content_hash(table, rows_per_piece).column("content_hash").to_pylist()
    assert column == expected
