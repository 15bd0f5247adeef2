"""Realistic, deterministic scraper CSVs for the demo, tests and benchmarks.

Rows look like scraped product pages: long descriptions (some with quoted newlines and
commas), non-ASCII text, prices in several formats, and a share of invalid rows and
duplicate SKUs, all reproducible from a seed.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterator

HEADER = (
    "sku",
    "title",
    "brand",
    "category",
    "description",
    "price",
    "currency",
    "product_url",
    "images",
    "availability",
    "weight",
    "plays",
    "isrc",
)

_BRANDS = ("Nordwand", "Kestrel", "Ülla", "Sonora", "Fjällgrip", "Bright&Co", "東京Audio")
_CATALOG = {
    "outdoor/tents": ("tent", "2-person dome tent", "ultralight shelter"),
    "outdoor/backpacks": ("backpack", "35 L hiking pack", "daypack"),
    "apparel/jackets": ("jacket", "insulated parka", "rain shell"),
    "apparel/shoes": ("trail running shoe", "hiking boot", "sandal"),
    "electronics/audio": ("headphones", "bluetooth speaker", "turntable"),
    "electronics/cameras": ("mirrorless camera", "action camera", "lens 35mm"),
    "media/music": ("vinyl LP", "album CD", "single"),
    "media/books": ("paperback novel", "hardcover guide", "cookbook"),
}
_WORDS = [
    "durable",
    "lightweight",
    "waterproof",
    "recycled",
    "premium",
    "classic",
    "compact",
    "breathable",
    "reinforced",
    "seam",
    "sealed",
    "zipper",
    "pocket",
    "adjustable",
    "strap",
    "warranty",
    "café",
    "naïve",
    "über",
    "crème",
    "résumé",
    "日本製",
    "качество",
]
INVALID_KINDS = ("sku", "url", "price", "weight", "private", "name", "columns")


def _description(rng: random.Random, target: int) -> str:
    text = " ".join(rng.choices(_WORDS, k=max(1, target // 8)))
    roll = rng.random()
    if roll < 0.02:
        text = text.replace(" ", "\n", 2)  # a quoted newline, common in scraped text
    elif roll < 0.10:
        text = text.replace(" ", ", ", 3)
    if rng.random() < 0.05:
        text += ' Size 12" (30 cm)'
    return text


def sample_rows(
    count: int,
    seed: int = 7,
    invalid_rate: float = 0.05,
    duplicate_rate: float = 0.03,
    description_bytes: int = 1000,
    sku_prefix: str = "SKU",
    invalid_kinds: tuple[str, ...] = INVALID_KINDS,
) -> Iterator[list[str]]:
    """Yield `count` data rows (without header) in `HEADER` order.

    `invalid_kinds` picks how invalid rows are broken; leaving out "columns" gives a file
    whose every record has the header's field count (loadable by a plain `COPY`).
    """
    rng = random.Random(seed)
    categories = list(_CATALOG)
    for index in range(count):
        if index and rng.random() < duplicate_rate:
            sku_number = rng.randrange(index)
        else:
            sku_number = index
        category = categories[sku_number % len(categories)]
        noun = rng.choice(_CATALOG[category])
        brand = _BRANDS[sku_number % len(_BRANDS)]
        is_media = category.startswith("media/")
        row = [
            f"{sku_prefix}-{sku_number:08d}",
            f"{brand} {noun} {sku_number % 97}",
            brand,
            category if rng.random() > 0.2 else "",
            _description(rng, rng.randint(description_bytes // 2, description_bytes * 3 // 2)),
            rng.choice(("{:.2f}", "${:,.2f}", "{:.2f} €", "{:.0f}")).format(rng.uniform(3, 2500)),
            rng.choice(("USD", "EUR", "GBP")),
            f"https://shop.example.com/p/{sku_number}?ref=scrape",
            "|".join(
                f"https://img.example.com/{sku_number}/{i}.jpg" for i in range(rng.randint(0, 3))
            ),
            rng.choice(("in_stock", "out_of_stock", "preorder", "")),
            rng.choice(("", "350 g", "1.2 kg", "12 oz", "2 lb", "800")),
            f"{rng.randint(0, 5_000_000):,}" if is_media else "",
            f"US-S1Z-{sku_number % 100:02d}-{sku_number:05d}" if is_media else "",
        ]
        if rng.random() < invalid_rate:
            _break(row, rng.choice(invalid_kinds))
        yield row


def _break(row: list[str], kind: str) -> None:
    if kind == "sku":
        row[0] = "bad sku with spaces"
    elif kind == "url":
        row[7] = "javascript:alert(1)"
    elif kind == "price":
        row[5] = "12,34.5"
    elif kind == "weight":
        row[10] = "-3 kg"
    elif kind == "private":
        row[7] = "http://169.254.169.254/latest/meta-data"
    elif kind == "name":
        row[1] = ""
    else:
        row.append("extra column")


def sample_csv(count: int, seed: int = 7, **options) -> bytes:
    """A whole CSV object (header and rows) as bytes."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows(sample_rows(count, seed, **options))
    return out.getvalue().encode("utf-8")


def write_sample_csv(path, count: int, seed: int = 7, batch: int = 10_000, **options) -> int:
    """Stream a large sample CSV to `path` without holding it in memory; returns its size."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        rows = sample_rows(count, seed, **options)
        while chunk := [row for _, row in zip(range(batch), rows, strict=False)]:
            writer.writerows(chunk)
        return handle.tell()


def demo_objects(large_rows: int = 40_000) -> list[tuple[str, bytes]]:
    """The demo's scrapes: several sources, two scrapes of one source (the newer wins), a
    large file with quoted newlines, a file missing a required column, and a non-CSV."""
    return [
        ("acme-outdoor_2026-11-01T06-00-00.csv", sample_csv(2_000, seed=1, sku_prefix="ACME")),
        ("acme-outdoor_2026-11-08T06-00-00.csv", sample_csv(2_000, seed=2, sku_prefix="ACME")),
        (
            "northwind-media/northwind_2026-11-15T06-00-00.csv",
            sample_csv(1_500, seed=3, sku_prefix="NW"),
        ),
        ("bigbox_2026-11-20T06-00-00.csv", sample_csv(large_rows, seed=4, sku_prefix="BB")),
        ("legacy-export_2026-11-21T06-00-00.csv", b"sku,title,price\nL-1,Old thing,3.50\n"),
        ("README.txt", b"Scraper drop folder: one CSV per scrape.\n"),
    ]
