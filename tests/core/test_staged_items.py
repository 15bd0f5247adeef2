"""The stored form of a valid item: image URL JSON and content hash."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given
from hypothesis import strategies as st

from catalog_pipeline.core.items import content_hash, image_urls_json
from catalog_pipeline.core.validation import map_header, validate_record

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
