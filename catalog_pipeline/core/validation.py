"""Row validation for scraped catalog CSVs: header mapping and per-record rules.

Pure Python and stdlib only (no Dagster, no DNS). The rules and reason codes are the
contract of DESIGN.md, section "Validation". ``validate_record`` is on the hot path
(millions of rows), so regexes are precompiled, absent/empty optional columns cost a
single branch, and the expensive URL and IP parsing only runs when a cheap check says
it is needed.

URL hosts: a raw non-ASCII host is ``url_non_ascii_host`` (homograph guard); an ASCII
host with punycode labels (``xn--…``) is decoded and judged by ``core.confusables``
(TR39-style mixed-script, whole-script-confusable and identifier-safety rules, as browsers
apply before showing an IDN): ``xn--pple-43d.com`` (``аpple.com``, Cyrillic ``а``) and
undecodable ``xn--`` labels are ``url_confusable_host``; ``xn--mnchen-3ya.de``
(``münchen.de``) is valid. Only hosts containing ``xn--`` pay for that check.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from urllib.parse import unquote, urlsplit

from catalog_pipeline.core.confusables import idn_host_problem
from catalog_pipeline.core.errors import HeaderError

__all__ = [
    "CANONICAL_COLUMNS",
    "REASON_CODES",
    "REQUIRED_COLUMNS",
    "HeaderMapping",
    "Item",
    "MissingColumnsError",
    "attributes_json",
    "header_changes",
    "map_header",
    "normalize_header_name",
    "validate_record",
]

REQUIRED_COLUMNS: tuple[str, ...] = ("sku", "name", "url")
CANONICAL_COLUMNS: tuple[str, ...] = (
    "sku",
    "name",
    "url",
    "image_urls",
    "play_count",
    "external_id",
    "weight_unit",
    "brand",
    "category",
    "description",
    "price",
    "currency",
    "availability",
    "weight",
)

# Header names accepted for each canonical column (compared after normalize_header_name).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "sku": ("sku", "product_sku"),
    "name": ("name", "title", "product_name"),
    "url": ("url", "product_url", "link"),
    "image_urls": ("image_urls", "images", "image_url"),
    "play_count": ("play_count", "playcount", "plays"),
    "external_id": ("external_id", "isrc"),
    "weight_unit": ("weight_unit",),
    "brand": ("brand", "manufacturer"),
    "category": ("category", "product_category"),
    "description": ("description", "product_description"),
    "price": ("price", "price_usd", "current_price"),
    "currency": ("currency", "currency_code"),
    "availability": ("availability", "stock_status"),
    "weight": ("weight",),
}

REASON_CODES: tuple[str, ...] = (
    "malformed_row",
    "encoding_error",
    "missing_sku",
    "sku_too_long",
    "sku_bad_chars",
    "missing_name",
    "name_too_long",
    "missing_url",
    "url_too_long",
    "url_bad_scheme",
    "url_no_host",
    "url_non_ascii_host",
    "url_confusable_host",
    "url_private_host",
    "description_too_long",
    "brand_too_long",
    "category_too_long",
    "bad_price",
    "bad_weight",
    "bad_play_count",
)

MAX_SKU_LENGTH = 200
MAX_NAME_LENGTH = 500
MAX_URL_LENGTH = 2048
MAX_DESCRIPTION_LENGTH = 50_000
MAX_BRAND_LENGTH = 200
MAX_CATEGORY_LENGTH = 200
MAX_PRICE = 1_000_000.0
# play_count is stored as a signed 64-bit integer; larger values could never be written.
MAX_PLAY_COUNT = 2**63 - 1

GRAMS_PER_UNIT: dict[str, float] = {
    "g": 1.0,
    "kg": 1000.0,
    "oz": 28.349523125,
    "lb": 453.59237,
    "lbs": 453.59237,
}

_MALFORMED_ROW = ("malformed_row",)
_URL_BAD_SCHEME = ("url_bad_scheme",)
_URL_NO_HOST = ("url_no_host",)
_URL_NON_ASCII_HOST = ("url_non_ascii_host",)
_URL_CONFUSABLE_HOST = ("url_confusable_host",)
_URL_PRIVATE_HOST = ("url_private_host",)
_NO_REASONS: tuple[str, ...] = ()

# re.ASCII wherever \d appears: it must not match other scripts' digits (١٢٣).
_HEADER_JUNK = re.compile(r"[^a-z0-9]+")
_SKU = re.compile(r"[A-Za-z0-9_./-]+")
_NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_PRICE = re.compile(_NUMBER, re.ASCII)
_PRICE_FAST = re.compile(rf"[$€£]?({_NUMBER})", re.ASCII)  # the common shapes, no stripping
_WEIGHT = re.compile(rf"({_NUMBER})\s*([A-Za-z]+)?", re.ASCII)
_PLAY_COUNT = re.compile(r"\d{1,3}(?:,\d{3})+|\d+", re.ASCII)
# A URL whose authority is a plain host (and optional short port) can be judged without
# urlsplit: it has no userinfo, brackets, percent escapes, backslashes or non-ASCII.
_SIMPLE_HTTP_URL = re.compile(r"https?://([a-z0-9.-]+)(?::(\d{1,5}))?(?:[/?#]|\Z)", re.I | re.A)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_URL_LEADING_JUNK = "".join(map(chr, range(0x21)))  # C0 controls and space, as urlsplit
# Could be an IPv4 literal in any form inet_aton accepts (127.1, 0x7f000001, 2130706433).
_IPV4_LIKE = re.compile(r"[0-9][0-9a-fx.]*")
_DIGITS = frozenset("0123456789")

_HEADER_LOOKUP: dict[str, str] = {}


def normalize_header_name(name: str) -> str:
    """Lowercase ``name`` and keep only ``[a-z0-9]`` (``"Product-SKU "`` -> ``"productsku"``)."""
    return _HEADER_JUNK.sub("", name.lower())


for _column, _aliases in COLUMN_ALIASES.items():
    for _alias in _aliases:
        _HEADER_LOOKUP[normalize_header_name(_alias)] = _column


class MissingColumnsError(ValueError):
    """The header lacks a required column; the whole file is rejected."""

    def __init__(self, missing: Sequence[str], header: Sequence[str]) -> None:
        self.missing: tuple[str, ...] = tuple(missing)
        self.header: tuple[str, ...] = tuple(header)
        accepted = "; ".join(f"{c}: {' / '.join(COLUMN_ALIASES[c])}" for c in self.missing)
        shown = list(self.header[:100])
        more = f" … and {len(self.header) - 100} more" if len(self.header) > 100 else ""
        super().__init__(
            f"CSV header is missing required column(s) {', '.join(map(repr, self.missing))} "
            f"(accepted names, any case or punctuation: {accepted}); header was {shown}{more}"
        )


class DuplicateColumnsError(HeaderError):
    """A catalog column appears twice in the header: which one holds the value is
    ambiguous, so the whole file is rejected."""

    def __init__(self, duplicates: dict[str, list[int]], header: Sequence[str]) -> None:
        self.duplicates = duplicates
        named = "; ".join(
            f"{' and '.join(repr(header[i]) for i in positions)} "
            f"(columns {', '.join(str(i + 1) for i in positions)})"
            for positions in duplicates.values()
        )
        super().__init__(
            f"CSV header names a column more than once: {named}; which one holds the "
            "value is ambiguous (names are compared ignoring case and punctuation)"
        )


@dataclass(frozen=True, slots=True)
class HeaderMapping:
    """Where each canonical column sits in a file's records."""

    field_count: int
    positions: dict[str, int]
    ignored: tuple[str, ...]
    # The columns outside the contract (unknown names, and a later alias of a column
    # already mapped), as (attribute name, record index): kept in `catalog_items.attributes`.
    extras: tuple[tuple[str, int], ...] = ()
    # Record index per CANONICAL_COLUMNS entry, -1 when absent; derived from positions.
    _indexes: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unknown = set(self.positions) - set(CANONICAL_COLUMNS)
        if unknown:
            raise ValueError(f"not canonical columns: {sorted(unknown)}")
        missing = [c for c in REQUIRED_COLUMNS if c not in self.positions]
        if missing:
            raise ValueError(f"positions lack required columns: {missing}")
        if any(not 0 <= i < self.field_count for i in self.positions.values()):
            raise ValueError(f"positions {self.positions} outside 0..{self.field_count - 1}")
        indexes = tuple(self.positions.get(c, -1) for c in CANONICAL_COLUMNS)
        object.__setattr__(self, "_indexes", indexes)


def map_header(header: Sequence[str]) -> HeaderMapping:
    """Map a CSV header to canonical columns; raise ``MissingColumnsError`` without sku/name/url.

    Matching ignores case and non-alphanumerics and accepts the DESIGN.md aliases. The
    same name twice (`sku` and `SKU`) for a catalog column raises `DuplicateColumnsError`;
    two different aliases of one column (`name` and `title`): the first wins. ``ignored``
    lists the names not used: unknown ones and later aliases.
    """
    names = list(header)
    if names and names[0].startswith("\ufeff"):
        names[0] = names[0][1:]
    positions: dict[str, int] = {}
    ignored: list[str] = []
    seen: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        normalized = normalize_header_name(name)
        column = _HEADER_LOOKUP.get(normalized)
        if column is not None:
            seen.setdefault(normalized, []).append(index)
        if column is None or column in positions:
            ignored.append(name)
        else:
            positions[column] = index
    duplicates = {name: found for name, found in seen.items() if len(found) > 1}
    if duplicates:
        raise DuplicateColumnsError(duplicates, names)
    missing = tuple(c for c in REQUIRED_COLUMNS if c not in positions)
    if missing:
        raise MissingColumnsError(missing, names)
    return HeaderMapping(
        field_count=len(names),
        positions=positions,
        ignored=tuple(ignored),
        extras=_extras(names, set(positions.values())),
    )


def _extras(names: Sequence[str], mapped: set[int]) -> tuple[tuple[str, int], ...]:
    """The attribute name of every unmapped column: its header name trimmed, `column_N`
    when that is empty, and `name (2)`, `name (3)`, … for a name seen before."""
    extras: list[tuple[str, int]] = []
    taken: set[str] = set()
    for index, name in enumerate(names):
        if index in mapped:
            continue
        base = name.strip() or f"column_{index + 1}"
        attribute, copy = base, 1
        while attribute in taken:
            copy += 1
            attribute = f"{base} ({copy})"
        taken.add(attribute)
        extras.append((attribute, index))
    return tuple(extras)


def header_changes(previous: Sequence[str], current: Sequence[str]) -> dict[str, list]:
    """How a source's header changed from its previous file: columns `added` and `removed`
    (names compared as headers are matched: ignoring case and punctuation), and catalog
    columns `renamed` to another accepted name (`[column, old name, new name]`)."""

    def columns(header: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
        """normalized name -> name, and catalog column -> normalized name (first wins)."""
        found: dict[str, str] = {}
        mapped: dict[str, str] = {}
        for name in header:
            key = normalize_header_name(name.lstrip("\ufeff"))
            found.setdefault(key, name.lstrip("\ufeff"))
            if key in _HEADER_LOOKUP:
                mapped.setdefault(_HEADER_LOOKUP[key], key)
        return found, mapped

    (before, mapped_before), (after, mapped_after) = columns(previous), columns(current)
    renamed = [
        [column, before[old], after[mapped_after[column]]]
        for column, old in mapped_before.items()
        if column in mapped_after and mapped_after[column] != old
    ]
    moved = {before[old] for _, old, _ in renamed} | {new for _, _, new in renamed}
    return {
        "added": [name for key, name in after.items() if key not in before and name not in moved],
        "removed": [name for key, name in before.items() if key not in after and name not in moved],
        "renamed": renamed,
    }


def attributes_json(fields: Sequence[str], extras: Sequence[tuple[str, int]]) -> str | None:
    """The stored `attributes` of one record: its non-empty extra values, trimmed, as a
    JSON object in header order; None when it has none."""
    found = {}
    for attribute, index in extras:
        value = fields[index].strip()
        if value:
            found[attribute] = value
    return json.dumps(found, ensure_ascii=False) if found else None


@dataclass(frozen=True, slots=True)
class Item:
    """A valid catalog row: trimmed text stored verbatim, numbers parsed."""

    sku: str
    name: str
    url: str
    brand: str | None
    category: str | None
    description: str | None
    price: float | None
    currency: str | None
    image_urls: tuple[str, ...]
    availability: str | None
    weight_grams: float | None
    play_count: int | None
    external_id: str | None


def _item_maker() -> Callable[..., Item]:
    """Return a positional ``Item`` constructor that fills the slots directly.

    The frozen dataclass ``__init__`` pays one ``object.__setattr__`` call per field (about
    0.7 µs a row here); the slot descriptors give an identical, still frozen ``Item``.
    """
    new = object.__new__
    (s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12) = (
        getattr(Item, f.name).__set__ for f in fields(Item)
    )

    def make_item(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12):
        item = new(Item)
        s0(item, a0)
        s1(item, a1)
        s2(item, a2)
        s3(item, a3)
        s4(item, a4)
        s5(item, a5)
        s6(item, a6)
        s7(item, a7)
        s8(item, a8)
        s9(item, a9)
        s10(item, a10)
        s11(item, a11)
        s12(item, a12)
        return item

    return make_item


_make_item = _item_maker()


def validate_record(
    fields: Sequence[str], mapping: HeaderMapping
) -> tuple[Item | None, tuple[str, ...]]:
    """Return ``(item, ())`` for a valid record, else ``(None, reasons)`` in REASON_CODES order."""
    if len(fields) != mapping.field_count:
        return None, _MALFORMED_ROW
    (
        i_sku,
        i_name,
        i_url,
        i_images,
        i_plays,
        i_external_id,
        i_weight_unit,
        i_brand,
        i_category,
        i_description,
        i_price,
        i_currency,
        i_availability,
        i_weight,
    ) = mapping._indexes
    reasons = _NO_REASONS

    sku = fields[i_sku].strip()
    if not sku:
        reasons += ("missing_sku",)
    else:
        if len(sku) > MAX_SKU_LENGTH:
            reasons += ("sku_too_long",)
        if _SKU.fullmatch(sku) is None:
            reasons += ("sku_bad_chars",)

    name = fields[i_name].strip()
    if not name:
        reasons += ("missing_name",)
    elif len(name) > MAX_NAME_LENGTH:
        reasons += ("name_too_long",)

    url = fields[i_url].strip()
    if not url:
        reasons += ("missing_url",)
    else:
        if len(url) > MAX_URL_LENGTH:
            reasons += ("url_too_long",)
        url_reasons = _url_reasons(url)
        if url_reasons:
            reasons += url_reasons

    description = (fields[i_description].strip() or None) if i_description >= 0 else None
    if description is not None and len(description) > MAX_DESCRIPTION_LENGTH:
        reasons += ("description_too_long",)
    brand = (fields[i_brand].strip() or None) if i_brand >= 0 else None
    if brand is not None and len(brand) > MAX_BRAND_LENGTH:
        reasons += ("brand_too_long",)
    category = (fields[i_category].strip() or None) if i_category >= 0 else None
    if category is not None and len(category) > MAX_CATEGORY_LENGTH:
        reasons += ("category_too_long",)

    price = None
    if i_price >= 0:
        raw = fields[i_price].strip()
        if raw:
            price = _parse_price(raw)
            if price is None:
                reasons += ("bad_price",)

    weight_grams = None
    if i_weight >= 0:
        raw = fields[i_weight].strip()
        if raw:
            unit = fields[i_weight_unit].strip() if i_weight_unit >= 0 else ""
            weight_grams = _parse_weight(raw, unit)
            if weight_grams is None:
                reasons += ("bad_weight",)

    play_count = None
    if i_plays >= 0:
        raw = fields[i_plays].strip()
        if raw:
            play_count = _parse_play_count(raw)
            if play_count is None:
                reasons += ("bad_play_count",)

    if reasons:
        return None, reasons

    image_urls: tuple[str, ...] = ()
    if i_images >= 0:
        raw = fields[i_images]
        if "|" in raw or ";" in raw:
            raw = raw.replace("|", " ").replace(";", " ")
        image_urls = tuple(raw.split())
    return (
        _make_item(
            sku,
            name,
            url,
            brand,
            category,
            description,
            price,
            (fields[i_currency].strip() or None) if i_currency >= 0 else None,
            image_urls,
            (fields[i_availability].strip() or None) if i_availability >= 0 else None,
            weight_grams,
            play_count,
            (fields[i_external_id].strip() or None) if i_external_id >= 0 else None,
        ),
        _NO_REASONS,
    )


def _parse_price(raw: str) -> float | None:
    """Parse a price such as ``$1,234.50``; ``None`` when malformed or out of range."""
    match = _PRICE_FAST.fullmatch(raw)
    if match is not None:
        raw = match.group(1)
    else:
        raw = "".join(raw.replace("$", "").replace("€", "").replace("£", "").split())
        if _PRICE.fullmatch(raw) is None:
            return None
    value = float(raw.replace(",", "") if "," in raw else raw)
    return value if value <= MAX_PRICE else None


def _parse_weight(raw: str, unit_column: str) -> float | None:
    """Parse ``<number> [unit]`` to grams; a suffix unit wins over the unit column."""
    match = _WEIGHT.fullmatch(raw)
    if match is None:
        return None
    number, unit = match.groups()
    factor = GRAMS_PER_UNIT.get((unit or unit_column or "g").lower())
    if factor is None:
        return None
    value = float(number.replace(",", "") if "," in number else number) * factor
    return value if value > 0 else None


def _parse_play_count(raw: str) -> int | None:
    """Parse a non-negative integer, thousands commas allowed; ``None`` when malformed."""
    if raw.isascii() and raw.isdigit():
        digits = raw
    elif _PLAY_COUNT.fullmatch(raw) is not None:
        digits = raw.replace(",", "")
    else:
        return None
    if len(digits) > 19:  # also keeps int() clear of the max-str-digits limit
        return None
    value = int(digits)
    return value if value <= MAX_PLAY_COUNT else None


def _url_reasons(url: str) -> tuple[str, ...]:
    """Scheme and host reasons for a non-empty, trimmed URL."""
    match = _SIMPLE_HTTP_URL.match(url)
    if match is None:
        return _url_reasons_slow(url)
    host, port = match.groups()
    if port is not None and int(port) > 65535:
        return _URL_NO_HOST
    host = host.lower()
    if host[-1] == ".":
        host = host.rstrip(".")
        if not host:
            return _URL_NO_HOST
    if "xn--" in host:
        return _host_reasons(host)
    if (
        host == "localhost"
        or host.endswith(".localhost")
        or (host[0] in _DIGITS and _is_private_host(host))
    ):
        return _URL_PRIVATE_HOST
    return _NO_REASONS


def _url_reasons_slow(url: str) -> tuple[str, ...]:
    """Like ``_url_reasons`` but always through ``urlsplit``; handles every URL shape."""
    try:
        parts = urlsplit(url)
    except ValueError:  # broken IPv6 brackets, netloc that NFKC-normalizes to delimiters
        return _URL_NO_HOST if _scheme(url) in ("http", "https") else _URL_BAD_SCHEME
    if parts.scheme not in ("http", "https"):
        return _URL_BAD_SCHEME
    try:
        parts.port  # noqa: B018 - only validates the port
    except ValueError:
        return _URL_NO_HOST
    host = parts.hostname
    if not host:
        return _URL_NO_HOST
    reasons = _host_reasons(host)
    netloc = parts.netloc
    if "\\" in netloc and reasons != _URL_NO_HOST:
        # Browsers (WHATWG) end the authority at a backslash, urllib does not; for
        # http://127.0.0.1\@good.com/ judge both readings so neither can smuggle a host.
        other = _host_of_authority(netloc.split("\\", 1)[0])
        if other:
            for reason in _host_reasons(other):
                if reason not in reasons:
                    reasons += (reason,)
            reasons = tuple(r for r in REASON_CODES if r in reasons)
    return reasons


def _scheme(url: str) -> str:
    """The lowercased scheme as urlsplit would find it, or ``""``."""
    url = url.lstrip(_URL_LEADING_JUNK).replace("\t", "").replace("\r", "").replace("\n", "")
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else ""


def _host_of_authority(authority: str) -> str:
    """The lowercased host of ``[userinfo@]host[:port]`` (brackets removed)."""
    hostinfo = authority.rpartition("@")[2]
    if hostinfo.startswith("["):
        return hostinfo[1:].partition("]")[0].lower()
    return hostinfo.partition(":")[0].lower()


def _host_reasons(host: str) -> tuple[str, ...]:
    """The ``url_no_host``, ``url_non_ascii_host``, ``url_confusable_host`` and
    ``url_private_host`` reasons of a lowercased host."""
    if "%" in host:  # browsers percent-decode hosts: %31%32%37.0.0.1 is 127.0.0.1
        host = unquote(host).lower()
    host = host.rstrip(".")
    if not host:
        return _URL_NO_HOST
    if host.isascii():
        reasons = _URL_PRIVATE_HOST if _is_private_host(host) else _NO_REASONS
        if "xn--" in host and idn_host_problem(host) is not None:
            reasons = _URL_CONFUSABLE_HOST + reasons
        return reasons
    # Homograph guard. Browsers also map full-width forms (１２７．０．０．１) to ASCII, so
    # judge that reading too.
    folded = unicodedata.normalize("NFKC", host).replace("\u3002", ".").lower().rstrip(".")
    if folded.isascii() and folded and _is_private_host(folded):
        return _URL_NON_ASCII_HOST + _URL_PRIVATE_HOST
    return _URL_NON_ASCII_HOST


def _is_private_host(host: str) -> bool:
    """True for localhost names and internal IP literals; ``host`` is ASCII lowercase."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    if ":" in host:
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError:
            return False
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.is_site_local:
            return True
    elif _IPV4_LIKE.fullmatch(host):
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(host))
        except (OSError, ValueError):
            return False
    else:
        return False
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_reserved
        or ip.is_multicast
        or not ip.is_global  # e.g. 100.64.0.0/10 (shared/CGNAT space, some metadata APIs)
    )
