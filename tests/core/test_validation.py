"""Tests for catalog_pipeline.core.validation (DESIGN.md, section "Validation")."""

from __future__ import annotations

import dataclasses
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from catalog_pipeline.core import validation
from catalog_pipeline.core.confusables import LATIN_LOOKALIKES, idn_host_problem
from catalog_pipeline.core.validation import (
    CANONICAL_COLUMNS,
    REASON_CODES,
    REQUIRED_COLUMNS,
    HeaderMapping,
    Item,
    MissingColumnsError,
    map_header,
    normalize_header_name,
    validate_record,
)

MAPPING = map_header(CANONICAL_COLUMNS)
VALID_ROW: dict[str, str] = {
    "sku": "ABC-123",
    "name": "Blue Widget",
    "url": "https://shop.example.com/p/abc-123",
}


def check(**values: str) -> tuple[Item | None, tuple[str, ...]]:
    """Validate a full-width record: a valid base row updated with ``values``."""
    merged = {**VALID_ROW, **values}
    return validate_record([merged.get(column, "") for column in CANONICAL_COLUMNS], MAPPING)


def reasons(**values: str) -> tuple[str, ...]:
    return check(**values)[1]


# --- constants -------------------------------------------------------------------------


def test_public_constants() -> None:
    assert REQUIRED_COLUMNS == ("sku", "name", "url")
    assert CANONICAL_COLUMNS == (
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
    assert tuple(validation.COLUMN_ALIASES) == CANONICAL_COLUMNS
    assert REASON_CODES == (
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


# --- one case per reason code ------------------------------------------------------------

REASON_CASES: list[tuple[str, dict[str, str], tuple[str, ...]]] = [
    ("missing_sku", {"sku": "   "}, ("missing_sku",)),
    ("sku_too_long", {"sku": "a" * 201}, ("sku_too_long",)),
    ("sku_bad_chars", {"sku": "ABC 123"}, ("sku_bad_chars",)),
    ("sku_bad_chars_unicode", {"sku": "ABC-１２３"}, ("sku_bad_chars",)),
    ("sku_too_long_and_bad", {"sku": "é" * 201}, ("sku_too_long", "sku_bad_chars")),
    ("missing_name", {"name": ""}, ("missing_name",)),
    ("name_too_long", {"name": "n" * 501}, ("name_too_long",)),
    ("missing_url", {"url": " \t "}, ("missing_url",)),
    ("url_too_long", {"url": "https://example.com/" + "a" * 2029}, ("url_too_long",)),
    ("url_bad_scheme", {"url": "ftp://example.com/file"}, ("url_bad_scheme",)),
    ("url_no_host", {"url": "http:///path"}, ("url_no_host",)),
    ("url_non_ascii_host", {"url": "https://bücher.example/"}, ("url_non_ascii_host",)),
    ("url_confusable_host", {"url": "http://xn--pple-43d.com/"}, ("url_confusable_host",)),
    ("url_private_host", {"url": "http://192.168.0.10/admin"}, ("url_private_host",)),
    ("description_too_long", {"description": "d" * 50_001}, ("description_too_long",)),
    ("brand_too_long", {"brand": "b" * 201}, ("brand_too_long",)),
    ("category_too_long", {"category": "c" * 201}, ("category_too_long",)),
    ("bad_price", {"price": "12.99 USD"}, ("bad_price",)),
    ("bad_weight", {"weight": "heavy"}, ("bad_weight",)),
    ("bad_play_count", {"play_count": "12k"}, ("bad_play_count",)),
]


@pytest.mark.parametrize(
    ("values", "expected"), [c[1:] for c in REASON_CASES], ids=[c[0] for c in REASON_CASES]
)
def test_each_reason(values: dict[str, str], expected: tuple[str, ...]) -> None:
    assert check(**values) == (None, expected)


@pytest.mark.parametrize(
    "fields",
    [["ABC", "name"], ["ABC", "name", "http://e.com/", "extra"] + [""] * 11, []],
    ids=["too_few", "too_many", "empty"],
)
def test_malformed_row(fields: list[str]) -> None:
    # Only the field count is judged: the other rules would also fail on these records.
    assert validate_record(fields, MAPPING) == (None, ("malformed_row",))


def test_every_reason_code_is_covered() -> None:
    produced = {r for case in REASON_CASES for r in case[2]} | {"malformed_row"}
    # encoding_error is reported by the CSV reader, which sees the bytes; records arrive
    # here already decoded.
    assert set(REASON_CODES) - produced == {"encoding_error"}


# --- boundaries and multiple reasons ------------------------------------------------------

LIMIT_CASES: list[tuple[str, int, str]] = [
    ("sku", 200, "sku_too_long"),
    ("name", 500, "name_too_long"),
    ("description", 50_000, "description_too_long"),
    ("brand", 200, "brand_too_long"),
    ("category", 200, "category_too_long"),
]


@pytest.mark.parametrize(("column", "limit", "reason"), LIMIT_CASES)
def test_length_limits_are_inclusive(column: str, limit: int, reason: str) -> None:
    assert reasons(**{column: "x" * limit}) == ()
    assert reasons(**{column: "  " + "x" * limit + "  "}) == ()  # trimmed before counting
    assert reasons(**{column: "x" * (limit + 1)}) == (reason,)


def test_url_length_limit_is_inclusive() -> None:
    base = "https://example.com/"
    assert reasons(url=base + "a" * (2048 - len(base))) == ()
    assert reasons(url=base + "a" * (2049 - len(base))) == ("url_too_long",)


MULTI_CASES: list[tuple[str, dict[str, str], tuple[str, ...]]] = [
    ("sku_and_price", {"sku": "", "price": "abc"}, ("missing_sku", "bad_price")),
    (
        "all_required_missing",
        {"sku": "", "name": "", "url": ""},
        ("missing_sku", "missing_name", "missing_url"),
    ),
    (
        "long_private_url_and_numbers",
        {
            "sku": "a b",
            "url": "http://127.0.0.1/" + "x" * 2048,
            "price": "-1",
            "weight": "0",
            "play_count": "1,23",
        },
        ("sku_bad_chars", "url_too_long", "url_private_host", "bad_price", "bad_weight")
        + ("bad_play_count",),
    ),
    (
        "text_limits",
        {"name": "n" * 501, "description": "d" * 50_001, "brand": "b" * 201, "category": ""},
        ("name_too_long", "description_too_long", "brand_too_long"),
    ),
    (
        "bad_scheme_hides_host_checks",
        {"url": "ftp://127.0.0.1/", "sku": "x" * 300},
        ("sku_too_long", "url_bad_scheme"),
    ),
]


@pytest.mark.parametrize(
    ("values", "expected"), [c[1:] for c in MULTI_CASES], ids=[c[0] for c in MULTI_CASES]
)
def test_every_reason_is_kept_in_order(values: dict[str, str], expected: tuple[str, ...]) -> None:
    item, got = check(**values)
    assert item is None
    assert got == expected
    assert list(got) == sorted(set(got), key=REASON_CODES.index)


# --- URLs ---------------------------------------------------------------------------------

URL_CASES: list[tuple[str, tuple[str, ...]]] = [
    # hostile
    ("javascript:alert(1)", ("url_bad_scheme",)),
    ("JavaScript:alert(1)", ("url_bad_scheme",)),
    ("file:///etc/passwd", ("url_bad_scheme",)),
    ("data:text/html,x", ("url_bad_scheme",)),
    ("ftp://example.com/", ("url_bad_scheme",)),
    ("//example.com/x", ("url_bad_scheme",)),
    ("example.com/x", ("url_bad_scheme",)),
    ("http://localhost/", ("url_private_host",)),
    ("http://LOCALHOST:8080/", ("url_private_host",)),
    ("http://localhost./", ("url_private_host",)),
    ("http://foo.localhost/", ("url_private_host",)),
    ("http://127.0.0.1/", ("url_private_host",)),
    ("http://127.0.0.1./", ("url_private_host",)),
    ("http://127.1/", ("url_private_host",)),
    ("http://2130706433/", ("url_private_host",)),
    ("http://0x7f000001/", ("url_private_host",)),
    ("http://0177.0.0.1/", ("url_private_host",)),
    ("http://10.0.0.1/", ("url_private_host",)),
    ("http://172.16.5.4/", ("url_private_host",)),
    ("http://192.168.1.1/", ("url_private_host",)),
    ("http://169.254.169.254/latest/meta-data", ("url_private_host",)),
    ("http://100.100.100.200/latest/meta-data", ("url_private_host",)),
    ("http://0.0.0.0/", ("url_private_host",)),
    ("http://0/", ("url_private_host",)),
    ("http://224.0.0.1/", ("url_private_host",)),
    ("http://240.0.0.1/", ("url_private_host",)),
    ("http://[::1]/", ("url_private_host",)),
    ("http://[::]/", ("url_private_host",)),
    ("http://[::ffff:127.0.0.1]/", ("url_private_host",)),
    ("http://[::ffff:7f00:1]/", ("url_private_host",)),
    ("http://[fe80::1]/", ("url_private_host",)),
    ("http://[fe80::1%25eth0]/", ("url_private_host",)),
    ("http://[fc00::1]/", ("url_private_host",)),
    ("http://[fec0::1]/", ("url_private_host",)),
    ("http://[ff02::1]/", ("url_private_host",)),
    ("http://good.com@127.0.0.1/", ("url_private_host",)),
    ("http://user:pw@localhost:80/", ("url_private_host",)),
    ("http://127.0.0.1\\@good.com/", ("url_private_host",)),
    ("http://%31%32%37.0.0.1/", ("url_private_host",)),
    ("http://ехample.com/", ("url_non_ascii_host",)),
    ("http://аpple.com/", ("url_non_ascii_host",)),  # raw Unicode: non-ASCII, as before
    ("http://xn--pple-43d.com/", ("url_confusable_host",)),  # аpple.com, Cyrillic а
    ("http://XN--PPLE-43D.COM/", ("url_confusable_host",)),
    ("http://xn--pple-43d.com./", ("url_confusable_host",)),
    ("https://shop.xn--pple-43d.com:8443/p?q=1", ("url_confusable_host",)),
    ("http://user@xn--pple-43d.com/", ("url_confusable_host",)),  # the urlsplit path
    ("http://xn--pple-43d%2ecom/", ("url_confusable_host",)),  # percent-encoded dot
    ("http://xn--hxample-9of.com/", ("url_confusable_host",)),  # hxοample, Greek ο
    ("http://xn--80ak6aa92e.com/", ("url_confusable_host",)),  # аррӏе: all Cyrillic
    ("http://xn--pple-43d.localhost/", ("url_confusable_host", "url_private_host")),
    ("http://xn--zz!.com/", ("url_confusable_host",)),  # not punycode
    ("http://xn--abc-.com/", ("url_confusable_host",)),  # decodes to ASCII "abc"
    ("http://xn--.com/", ("url_confusable_host",)),
    ("http://１２７.０.０.１/", ("url_non_ascii_host", "url_private_host")),
    ("http://", ("url_no_host",)),
    ("http:example.com", ("url_no_host",)),
    ("http:///path", ("url_no_host",)),
    ("http://:80/", ("url_no_host",)),
    ("http://./", ("url_no_host",)),
    ("http://example.com:99999/", ("url_no_host",)),
    ("http://example.com:80a/", ("url_no_host",)),
    ("http://[::1/", ("url_no_host",)),
    ("http://::1]/", ("url_no_host",)),
    ("http://[127.0.0.1]/", ("url_no_host",)),
    ("http://[not-an-ip]/", ("url_no_host",)),
    ("ftp://[broken/", ("url_bad_scheme",)),
    # fine
    ("http://xn--mnchen-3ya.de/", ()),  # münchen.de
    ("http://axn--b.com/", ()),  # "xn--" inside a label is not punycode
    ("http://xn--e1afmkfd.xn--p1ai/", ()),  # пример.рф
    ("https://example.com:8443/x", ()),
    ("https://example.com:/x", ()),
    ("HTTPS://Example.COM/Path?q=1#frag", ()),
    ("http://example.com./", ()),
    ("http://user@example.com/", ()),
    ("http://8.8.8.8/", ()),
    ("http://[2001:4860:4860::8888]/", ()),
    ("http://[::ffff:8.8.8.8]/", ()),
    ("http://1password.com/", ()),
    ("http://cafe.example/", ()),
    ("http://127.0.0.1.example.com/", ()),
    ("http://localhost.example.com/", ()),
    ("https://example.com/javascript:alert(1)", ()),
]


@pytest.mark.parametrize(("url", "expected"), URL_CASES, ids=[c[0] for c in URL_CASES])
def test_url_rules(url: str, expected: tuple[str, ...]) -> None:
    assert reasons(url=url) == expected


@pytest.mark.parametrize("url", [c[0] for c in URL_CASES] + ["http://a.b:65535/", "http://a:0/"])
def test_url_fast_path_agrees_with_urlsplit_path(url: str) -> None:
    assert validation._url_reasons(url) == validation._url_reasons_slow(url)


# --- IDN homographs (core.confusables) -----------------------------------------------------


def punycode(host: str) -> str:
    """``host`` with each non-ASCII label written as an IDNA A-label (``xn--…``)."""
    return ".".join(
        label if label.isascii() else "xn--" + label.encode("punycode").decode()
        for label in host.split(".")
    )


ORDINARY_IDNS = [
    "münchen.de",
    "bücher.example",
    "straße.de",
    "例え.jp",
    "sony例え.jp",  # Latin + Han + Hiragana: Japanese
    "コーヒー.jp",  # ー is Katakana-Hiragana
    "らーめん.jp",
    "中文abc.cn",  # Latin + Han
    "ㄅ中文.tw",  # Han + Bopomofo
    "한국abc.kr",  # Latin + Hangul
    "пример.рф",  # и, м, п…: not all Latin-looking
    "пример.com",
    "рус.рф",  # reads "pyc", but under a Cyrillic TLD no Latin label can exist
    "ελληνικά.gr",
    "αθήνα.gr",
    "και.ελ",
    "مثال.com",
    "مثال١٢.com",  # Arabic letters with Arabic-Indic digits
    "shop.münchen.de",
]


@pytest.mark.parametrize("host", ORDINARY_IDNS)
def test_ordinary_idns_are_valid_in_punycode(host: str) -> None:
    assert idn_host_problem(punycode(host)) is None
    assert reasons(url=f"https://{punycode(host)}/p/1?x=2") == ()
    # The raw Unicode spelling stays rejected as it always was (DESIGN.md).
    assert reasons(url=f"https://{host}/p/1") == ("url_non_ascii_host",)


HOMOGRAPHS: list[tuple[str, str]] = [
    ("аpple.com", "mixes scripts Cyrillic + Latin"),  # Cyrillic а
    ("pаypal.com", "mixes scripts Cyrillic + Latin"),
    ("gооgle.com", "mixes scripts Cyrillic + Latin"),
    ("shop.аpple.com", "mixes scripts Cyrillic + Latin"),  # any label, not just the first
    ("hxοample.com", "mixes scripts Greek + Latin"),  # Greek ο
    ("кирилλ.com", "mixes scripts Cyrillic + Greek"),
    ("ex৪mple.com", "mixes scripts Bengali + Latin"),  # Bengali four looks like 8
    ("한국ー.kr", "mixes scripts Hangul + Katakana"),  # not one of TR39's allowed sets
    ("hawaiʻi.com", "mixes scripts Latin + Modifier"),  # a script-neutral letter: documented
    ("аррӏе.com", "whole-script confusable"),  # all Cyrillic, reads "apple"
    ("ѕсоре.com", "whole-script confusable"),
    ("рус.com", "whole-script confusable"),  # a real word, but under a Latin TLD
    ("ορτ.com", "whole-script confusable"),  # Greek
    ("аррӏе.рор", "whole-script confusable"),  # a TLD that itself reads Latin exempts nothing
    ("ex\u200dample.com", "ZERO WIDTH JOINER"),
    ("ex\ufe0fample.com", "VARIATION SELECTOR-16"),
    ("ɡoogle.com", "LATIN SMALL LETTER SCRIPT G"),
    ("ᴀpple.com", "LATIN LETTER SMALL CAPITAL A"),
    ("\U0001f4a9.com", "PILE OF POO"),
    ("ｅxample.com", "normalized lowercase form"),  # fullwidth
    ("ﬁsh.com", "normalized lowercase form"),  # ligature
    ("exㅤample.com", "normalized lowercase form"),  # HANGUL FILLER
    ("Ünchen.de", "normalized lowercase form"),  # IDNA labels are lowercase
    ("fo\u0301o.com", "normalized lowercase form"),  # not NFC
    ("\u0301foo.com", "starts with the combining mark"),
    ("مثال١۱.com", "different number systems"),
]


@pytest.mark.parametrize(("host", "problem"), HOMOGRAPHS, ids=[h for h, _ in HOMOGRAPHS])
def test_punycode_homographs_are_confusable_hosts(host: str, problem: str) -> None:
    encoded = punycode(host)
    assert encoded.isascii() and "xn--" in encoded
    assert problem in (idn_host_problem(encoded) or "")
    assert reasons(url=f"https://{encoded}/p/1") == ("url_confusable_host",)
    assert reasons(url=f"https://{encoded.upper()}/p/1") == ("url_confusable_host",)
    assert reasons(url=f"https://{host}/p/1")[0] == "url_non_ascii_host"


BAD_PUNYCODE: list[tuple[str, str]] = [
    ("xn--zz!", "not valid punycode"),
    ("xn--99999999999", "not valid punycode"),
    ("xn--abc-", "not a valid IDNA label"),  # decodes to plain "abc"
    ("xn--", "not a valid IDNA label"),
    ("xn--a", "U+0080"),  # decodes to a control character
    ("xn--" + "a" * 60, "longer than 63"),
]


@pytest.mark.parametrize(("label", "problem"), BAD_PUNYCODE, ids=[b[0][:12] for b in BAD_PUNYCODE])
def test_undecodable_punycode_is_a_confusable_host(label: str, problem: str) -> None:
    assert problem in (idn_host_problem(f"{label}.com") or "")
    assert reasons(url=f"http://{label}.com/") == ("url_confusable_host",)


def test_ascii_hosts_without_punycode_skip_the_idn_check() -> None:
    idn_host_problem.cache_clear()
    for url in ("https://shop.example.com/p", "http://8.8.8.8/", "http://u@example.com/"):
        assert reasons(url=url) == ()
    assert reasons(url="http://localhost/") == ("url_private_host",)
    assert idn_host_problem.cache_info().misses == 0  # never called
    reasons(url="http://xn--pple-43d.com/")
    reasons(url="http://xn--pple-43d.com/other")
    assert idn_host_problem.cache_info()[:2] == (1, 1)  # judged once per host


TLDS = ["com", "de", "xn--p1ai", "xn--qxam"]  # .рф and .ελ too: the exemption is per script
LATIN_WORDS = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=12)
LOOKALIKES = sorted(LATIN_LOOKALIKES["CYRILLIC"] | LATIN_LOOKALIKES["GREEK"])


@given(LATIN_WORDS, st.integers(0, 12), st.sampled_from(LOOKALIKES), st.sampled_from(TLDS))
def test_any_latin_label_with_a_lookalike_letter_is_confusable(
    word: str, at: int, lookalike: str, tld: str
) -> None:
    at = min(at, len(word))
    host = punycode(f"{word[:at]}{lookalike}{word[at:]}.{tld}")
    url = f"https://{host}/"
    assert reasons(url=url) == ("url_confusable_host",)
    assert validation._url_reasons(url) == validation._url_reasons_slow(url)


@given(
    st.text(alphabet="бвгджзийклмнптфцчшщэюяе", min_size=1, max_size=10),
    st.sampled_from("бджзийлмфцчшщэюя"),
    st.text(alphabet=string.ascii_lowercase, max_size=5),
    st.sampled_from(TLDS),
)
def test_any_cyrillic_label_with_a_distinct_letter_is_valid(
    text: str, distinct: str, latin: str, tld: str
) -> None:
    host = punycode(f"{text}{distinct}.{latin or 'x'}.{tld}")
    url = f"https://{host}/"
    assert reasons(url=url) == ()
    assert validation._url_reasons(url) == validation._url_reasons_slow(url)


# --- valid rows and parsed values ---------------------------------------------------------

VALID_CASES: list[tuple[str, dict[str, str], dict[str, object]]] = [
    ("punycode_host", {"url": "http://xn--mnchen-3ya.de/"}, {}),
    ("port", {"url": "https://example.com:8443/x"}, {"url": "https://example.com:8443/x"}),
    ("price_currency_commas", {"price": "$1,234.50"}, {"price": 1234.5}),
    ("price_max", {"price": "1,000,000"}, {"price": 1_000_000.0}),
    ("price_max_decimal", {"price": "1000000.00"}, {"price": 1_000_000.0}),
    ("price_zero", {"price": "0"}, {"price": 0.0}),
    ("price_euro_suffix_spaces", {"price": " 12.50 € "}, {"price": 12.5}),
    ("price_pound_space", {"price": "£ 7"}, {"price": 7.0}),
    ("price_space_grouping", {"price": "1 234.5"}, {"price": 1234.5}),
    ("price_nbsp", {"price": "1\u00a0234"}, {"price": 1234.0}),
    ("weight_kg", {"weight": "2 kg"}, {"weight_grams": 2000.0}),
    ("weight_oz_suffix", {"weight": "16oz"}, {"weight_grams": 16 * 28.349523125}),
    ("weight_lb_column", {"weight": "1", "weight_unit": "lb"}, {"weight_grams": 453.59237}),
    ("weight_lbs_upper", {"weight": "2 LBS"}, {"weight_grams": 2 * 453.59237}),
    ("weight_default_grams", {"weight": "250"}, {"weight_grams": 250.0}),
    ("weight_decimal_grams", {"weight": "0.5g"}, {"weight_grams": 0.5}),
    ("weight_suffix_wins", {"weight": "2kg", "weight_unit": "lb"}, {"weight_grams": 2000.0}),
    ("weight_unit_without_weight", {"weight": "", "weight_unit": "stone"}, {"weight_grams": None}),
    ("weight_commas", {"weight": "1,500 g"}, {"weight_grams": 1500.0}),
    ("play_count_commas", {"play_count": "1,234"}, {"play_count": 1234}),
    ("play_count_millions", {"play_count": "1,234,567"}, {"play_count": 1_234_567}),
    ("play_count_zero", {"play_count": "0"}, {"play_count": 0}),
    ("play_count_int64_max", {"play_count": str(2**63 - 1)}, {"play_count": 2**63 - 1}),
    ("sku_all_allowed_chars", {"sku": "Az09_./-"}, {"sku": "Az09_./-"}),
    (
        "images_split",
        {"image_urls": " a.jpg| b.jpg ;c.jpg  d.jpg||;"},
        {"image_urls": ("a.jpg", "b.jpg", "c.jpg", "d.jpg")},
    ),
    ("images_empty", {"image_urls": " | ; "}, {"image_urls": ()}),
    (
        "text_trimmed_verbatim",
        {
            "name": "  <script>alert(1)</script> &amp; Co  ",
            "brand": " =cmd|'/c calc'!A1 ",
            "description": "line 1\nline 2 <b>bold</b>",
        },
        {
            "name": "<script>alert(1)</script> &amp; Co",
            "brand": "=cmd|'/c calc'!A1",
            "description": "line 1\nline 2 <b>bold</b>",
        },
    ),
    (
        "empty_optionals_are_none",
        {"brand": " ", "category": "", "description": "\n", "currency": " "},
        {"brand": None, "category": None, "description": None, "currency": None, "price": None},
    ),
    (
        "other_text",
        {"currency": " EUR ", "availability": "in stock", "external_id": " USRC17607839 "},
        {"currency": "EUR", "availability": "in stock", "external_id": "USRC17607839"},
    ),
]


@pytest.mark.parametrize(
    ("values", "expected"), [c[1:] for c in VALID_CASES], ids=[c[0] for c in VALID_CASES]
)
def test_valid_rows(values: dict[str, str], expected: dict[str, object]) -> None:
    item, got = check(**values)
    assert got == ()
    assert item is not None
    for attribute, value in expected.items():
        assert getattr(item, attribute) == pytest.approx(value), attribute


BAD_NUMBER_CASES: list[tuple[str, str, str]] = [
    ("price", "-1", "bad_price"),
    ("price", "1000000.01", "bad_price"),
    ("price", "1,000,001", "bad_price"),
    ("price", "1,23", "bad_price"),
    ("price", "1,2345.00", "bad_price"),
    ("price", "1.", "bad_price"),
    ("price", ".5", "bad_price"),
    ("price", "1e3", "bad_price"),
    ("price", "$", "bad_price"),
    ("price", "USD 12", "bad_price"),
    ("price", "١٢", "bad_price"),
    ("price", "9" * 400, "bad_price"),
    ("weight", "0", "bad_weight"),
    ("weight", "0.0 kg", "bad_weight"),
    ("weight", "-2 kg", "bad_weight"),
    ("weight", "5 stone", "bad_weight"),
    ("weight", "2 kgs", "bad_weight"),
    ("weight", "kg", "bad_weight"),
    ("weight", "2 k g", "bad_weight"),
    ("play_count", "-1", "bad_play_count"),
    ("play_count", "1.5", "bad_play_count"),
    ("play_count", "1,23", "bad_play_count"),
    ("play_count", "12,3456", "bad_play_count"),
    ("play_count", ",123", "bad_play_count"),
    ("play_count", "+5", "bad_play_count"),
    ("play_count", "٣", "bad_play_count"),
    ("play_count", "²", "bad_play_count"),
    ("play_count", str(2**63), "bad_play_count"),
    ("play_count", "9" * 5000, "bad_play_count"),
]


@pytest.mark.parametrize(("column", "value", "reason"), BAD_NUMBER_CASES)
def test_bad_numbers(column: str, value: str, reason: str) -> None:
    assert reasons(**{column: value}) == (reason,)


@pytest.mark.parametrize("unit", ["stone", "grams", "1"])
def test_unknown_unit_column_is_bad_weight(unit: str) -> None:
    assert reasons(weight="5", weight_unit=unit) == ("bad_weight",)


def test_valid_item_equals_dataclass_constructor_and_is_frozen() -> None:
    item, _ = check(
        brand="Acme",
        price="19.99",
        currency="USD",
        image_urls="a.jpg|b.jpg",
        availability="in_stock",
        weight="2 kg",
        play_count="7",
        external_id="ISRC1",
    )
    assert item == Item(
        sku="ABC-123",
        name="Blue Widget",
        url="https://shop.example.com/p/abc-123",
        brand="Acme",
        category=None,
        description=None,
        price=19.99,
        currency="USD",
        image_urls=("a.jpg", "b.jpg"),
        availability="in_stock",
        weight_grams=2000.0,
        play_count=7,
        external_id="ISRC1",
    )
    assert type(item) is Item
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.sku = "other"  # type: ignore[misc]


def test_required_columns_only() -> None:
    mapping = map_header(["url", "name", "sku"])
    item, got = validate_record([" http://e.com/ ", " N ", " S "], mapping)
    assert got == ()
    assert item == Item("S", "N", "http://e.com/", *[None] * 5, (), None, None, None, None)


# --- headers ------------------------------------------------------------------------------

HEADER_NAME_CASES: list[tuple[str, str]] = [
    ("Product-SKU ", "productsku"),
    ("  Image URLs", "imageurls"),
    ("ISRC#", "isrc"),
    ("ÜberName_1", "bername1"),
    ("", ""),
]


@pytest.mark.parametrize(("name", "expected"), HEADER_NAME_CASES)
def test_normalize_header_name(name: str, expected: str) -> None:
    assert normalize_header_name(name) == expected


ALIAS_CASES: list[tuple[str, str]] = [
    (alias, column) for column, aliases in validation.COLUMN_ALIASES.items() for alias in aliases
] + [
    ("Product_SKU", "sku"),
    ("Title", "name"),
    ("PRODUCT NAME", "name"),
    ("product-url", "url"),
    ("Link", "url"),
    ("Images", "image_urls"),
    ("Image-URL", "image_urls"),
    ("plays", "play_count"),
    ("PlayCount", "play_count"),
    ("ISRC", "external_id"),
    ("External ID", "external_id"),
    ("Weight Unit", "weight_unit"),
    ("  Price ($) ", "price"),
]


@pytest.mark.parametrize(("alias", "column"), ALIAS_CASES)
def test_header_aliases(alias: str, column: str) -> None:
    header = ["sku", "name", "url"]
    if column in header:
        header[header.index(column)] = alias
    else:
        header.append(alias)
    mapping = map_header(header)
    assert mapping.positions[column] == header.index(alias)
    assert mapping.ignored == ()


def test_map_header_full() -> None:
    header = ["\ufeffProduct_SKU", "Title", "colour", "Product-URL", "Images", "plays", "", "ISRC"]
    mapping = map_header(header)
    assert mapping == HeaderMapping(
        field_count=8,
        positions={
            "sku": 0,
            "name": 1,
            "url": 3,
            "image_urls": 4,
            "play_count": 5,
            "external_id": 7,
        },
        ignored=("colour", ""),
        extras=(("colour", 2), ("column_7", 6)),
    )


def test_of_two_aliases_of_a_column_the_first_wins_and_the_later_is_ignored() -> None:
    mapping = map_header(["name", "sku", "Title", "url", "product_name", "colour"])
    assert mapping.positions == {"name": 0, "sku": 1, "url": 3}
    assert mapping.ignored == ("Title", "product_name", "colour")


def test_the_same_column_named_twice_is_rejected_naming_both() -> None:
    from catalog_pipeline.core.validation import DuplicateColumnsError

    with pytest.raises(DuplicateColumnsError) as raised:
        map_header(["name", "sku", "url", "SKU", "Name ", "note", "note"])
    message = str(raised.value)
    assert "'sku' and 'SKU' (columns 2, 4)" in message
    assert "'name' and 'Name ' (columns 1, 5)" in message
    assert "note" not in message  # unknown columns are ignored, twice or not


def test_bom_on_first_name_is_ignored() -> None:
    assert map_header(["\ufeffsku", "name", "url"]).positions["sku"] == 0
    assert map_header(["\ufeffColour", "sku", "name", "url"]).ignored == ("Colour",)


MISSING_CASES: list[tuple[list[str], tuple[str, ...]]] = [
    (["name", "url"], ("sku",)),
    (["sku", "Product Name Long", "url"], ("name",)),
    (["sku", "name", "image_url"], ("url",)),
    (["id", "title", "website"], ("sku", "url")),
    ([], ("sku", "name", "url")),
    ([""], ("sku", "name", "url")),
]


@pytest.mark.parametrize(("header", "missing"), MISSING_CASES)
def test_missing_required_columns(header: list[str], missing: tuple[str, ...]) -> None:
    with pytest.raises(MissingColumnsError) as info:
        map_header(header)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.missing == missing
    message = str(error)
    for column in missing:
        assert repr(column) in message
    for column in set(REQUIRED_COLUMNS) - set(missing):
        assert repr(column) not in message.split(";")[0].split("(accepted")[0]
    assert str(header) in message


def test_header_mapping_rejects_inconsistent_positions() -> None:
    with pytest.raises(ValueError, match="outside"):
        HeaderMapping(field_count=3, positions={"sku": 0, "name": 1, "url": 3}, ignored=())
    with pytest.raises(ValueError, match="required"):
        HeaderMapping(field_count=3, positions={"sku": 0, "name": 1}, ignored=())
    with pytest.raises(ValueError, match="canonical"):
        HeaderMapping(field_count=3, positions={"sku": 0, "name": 1, "url": 2, "x": 0}, ignored=())


def test_directly_built_mapping_is_usable() -> None:
    mapping = HeaderMapping(
        field_count=4, positions={"url": 0, "sku": 2, "name": 3, "price": 1}, ignored=()
    )
    item, got = validate_record(["http://e.com/", "3", "S1", "N"], mapping)
    assert got == ()
    assert item is not None
    assert (item.sku, item.name, item.url, item.price) == ("S1", "N", "http://e.com/", 3.0)


# --- properties ---------------------------------------------------------------------------

SKU_ALPHABET = string.ascii_letters + string.digits + "_./-"
SKU_REASONS = {"missing_sku", "sku_too_long", "sku_bad_chars"}


@given(st.text(alphabet=SKU_ALPHABET, min_size=1, max_size=200))
def test_any_allowed_sku_passes(sku: str) -> None:
    assert reasons(sku=sku) == ()


@given(
    st.text(alphabet=SKU_ALPHABET, min_size=1, max_size=90),
    st.characters(exclude_characters=SKU_ALPHABET, exclude_categories=("Cs",)),
    st.text(alphabet=SKU_ALPHABET, min_size=1, max_size=90),
)
def test_any_sku_with_a_foreign_char_fails(prefix: str, bad: str, suffix: str) -> None:
    assert SKU_REASONS.intersection(reasons(sku=prefix + bad + suffix)) == {"sku_bad_chars"}


@given(st.lists(st.text(max_size=30), min_size=len(CANONICAL_COLUMNS), max_size=15))
def test_any_record_gives_item_xor_known_reasons(fields: list[str]) -> None:
    item, got = validate_record(fields, MAPPING)
    assert (item is None) == bool(got)
    assert list(got) == sorted(set(got), key=REASON_CODES.index)
    if len(fields) != len(CANONICAL_COLUMNS):
        assert got == ("malformed_row",)


@given(
    st.from_regex(
        r"(?i:https?)://[A-Za-z0-9.\-]{1,20}(:[0-9]{0,6})?([/?#][a-z]{0,5})?", fullmatch=True
    )
)
def test_fast_url_path_agrees_for_generated_urls(url: str) -> None:
    assert validation._url_reasons(url) == validation._url_reasons_slow(url)
