"""The audit rules at their thresholds, without a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from catalog_pipeline.core.quality import (
    CHECKS,
    QualityRules,
    SourceStats,
    audit,
    check_kind,
    flagged_by_check,
    source_flags,
)
from catalog_pipeline.core.quality_chart import daily_invalid_rates, render_invalid_rate_chart

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
RULES = QualityRules(low_price_sources=frozenset({"dollar_store"}))
FRESH = NOW - timedelta(days=1)


def stats(source: str = "shop", **overrides) -> SourceStats:
    values = {
        "items": 100,
        "priced": 100,
        "median_price": 45.0,
        "weighed": 100,
        "files_completed": 1,
        "last_completed_observed_at": FRESH,
    }
    values.update(overrides)
    return SourceStats(source=source, **values)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, ()),
        ({"decimal_bug": 1}, ("decimal_bug",)),  # 1 of 100 = the 1 % threshold
        ({"decimal_bug": 1, "priced": 101}, ()),  # just under 1 %
        ({"median_price": 19.99}, ("low_median",)),
        ({"median_price": 20.0}, ()),
        ({"median_price": None, "priced": 0}, ()),  # no prices: nothing to judge
        ({"nulls": {"brand": 31}}, ("high_null:brand",)),
        ({"nulls": {"brand": 30}}, ()),  # exactly 30 % is allowed
        (
            {"nulls": {"weight": 100, "price": 40, "images": 31}},
            ("high_null:price", "high_null:weight", "high_null:images"),
        ),
        ({"bad_weight": 1}, ("bad_weight",)),
        ({"bad_weight": 1, "weighed": 200}, ()),
        ({"empty_name": 1}, ("empty_name",)),
        ({"last_completed_observed_at": NOW - timedelta(days=30, seconds=1)}, ("stale",)),
        ({"last_completed_observed_at": NOW - timedelta(days=29)}, ()),
        ({"last_completed_observed_at": None, "files_completed": 0}, ("stale",)),
    ],
)
def test_each_flag_fires_at_its_threshold_and_not_below(overrides, expected):
    assert source_flags(stats(**overrides), RULES, NOW) == expected


def test_allowlisted_sources_may_have_a_low_median():
    assert source_flags(stats("dollar_store", median_price=3.0), RULES, NOW) == ()
    assert source_flags(stats("other", median_price=3.0), RULES, NOW) == ("low_median",)


def test_flags_are_grouped_by_check_with_their_sources():
    audits = audit(
        [
            stats("b", nulls={"brand": 50, "images": 60}),
            stats("a", empty_name=2),
            stats("c"),
        ],
        RULES,
        NOW,
    )
    assert [entry.source for entry in audits] == ["a", "b", "c"]
    flagged = flagged_by_check(audits)
    assert set(flagged) == set(CHECKS)
    assert flagged["high_null"] == {"b": ["high_null:brand", "high_null:images"]}
    assert flagged["empty_name"] == {"a": ["empty_name"]}
    assert flagged["stale"] == {} and flagged["decimal_bug"] == {}
    assert check_kind("high_null:price") == "high_null"


def test_daily_rates_sum_files_of_a_day_and_merge_small_sources():
    day = datetime(2026, 5, 1, 6, tzinfo=UTC)
    files = [
        ("shop", day, 100, 10),
        ("shop", day + timedelta(hours=5), 300, 10),  # same day: (10 + 10) / 400
        ("shop", day + timedelta(days=1), 50, 0),
    ] + [(f"tiny{i}", day, 1, 1) for i in range(9)]  # 10 sources: two become "other"
    series = daily_invalid_rates(files)
    assert series["shop"] == [(day.date(), 0.05), ((day + timedelta(days=1)).date(), 0.0)]
    assert len(series) == 9 and series["other sources"] == [(day.date(), 1.0)]


def test_the_chart_is_a_png_even_without_data():
    for series in ({}, {"shop": [(FRESH.date(), 0.1), (NOW.date(), 0.2)]}):
        assert render_invalid_rate_chart(series).startswith(b"\x89PNG\r\n\x1a\n")
