"""The per-source catalog audit: which sources look broken, and why.

Pure rules over per-source statistics (counted in SQL by `catalog_pipeline.db.quality`).
Every flag is a short string an on-call engineer can search for in the runbook:
`decimal_bug`, `low_median`, `high_null:<field>`, `bad_weight`, `empty_name`, `stale`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

# Fields whose null share is audited, as named in flags, in table order.
NULLABLE_FIELDS = ("price", "brand", "description", "weight", "images", "availability")

# One asset check per kind of flag (`high_null:<field>` flags belong to `high_null`).
CHECKS = {
    "decimal_bug": "No source has prices under 10 with three or more decimals "
    "(a scraper reading 1.299 for 1,299).",
    "low_median": "No source outside the allowlist has a median price under the floor.",
    "high_null": "No source has more than the allowed share of nulls in an audited field.",
    "bad_weight": "No source has weights under 1 g or over 100 kg.",
    "empty_name": "No source has items whose name is blank or a placeholder.",
    "stale": "Every source has a completed file within the staleness window.",
}

# Names that mean "no name" once lower-cased and trimmed (zero-width characters removed).
EMPTY_NAME_PLACEHOLDERS = (
    "",
    "-",
    "--",
    "?",
    ".",
    "n/a",
    "na",
    "nil",
    "none",
    "null",
    "tbd",
    "undefined",
    "unknown",
    "untitled",
    "no name",
)
INVISIBLE_CHARACTERS = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00a0")


@dataclass(frozen=True, slots=True)
class QualityRules:
    """Thresholds of the audit; every one is asset config in the Dagster layer."""

    decimal_bug_share: float = 0.01
    low_median_price: float = 20.0
    low_price_sources: frozenset[str] = frozenset()
    null_share: float = 0.30
    min_weight_grams: float = 1.0
    max_weight_grams: float = 100_000.0
    bad_weight_share: float = 0.01
    stale_days: int = 30


@dataclass(frozen=True, slots=True)
class SourceStats:
    """What the database knows about one source (items as stored now, files ever seen)."""

    source: str
    items: int = 0
    priced: int = 0
    median_price: float | None = None
    nulls: Mapping[str, int] = field(default_factory=dict)
    decimal_bug: int = 0
    weighed: int = 0
    bad_weight: int = 0
    empty_name: int = 0
    files_completed: int = 0
    last_completed_observed_at: datetime | None = None
    rows_total: int = 0
    rows_invalid: int = 0

    def null_share(self, name: str) -> float:
        return self.nulls.get(name, 0) / self.items if self.items else 0.0

    @property
    def invalid_rate(self) -> float:
        return self.rows_invalid / self.rows_total if self.rows_total else 0.0


@dataclass(frozen=True, slots=True)
class SourceAudit:
    stats: SourceStats
    flags: tuple[str, ...]

    @property
    def source(self) -> str:
        return self.stats.source


def _share(count: int, total: int) -> float:
    return count / total if total else 0.0


def source_flags(stats: SourceStats, rules: QualityRules, now: datetime) -> tuple[str, ...]:
    """The flags of one source, in a stable order."""
    flags: list[str] = []
    if stats.decimal_bug and _share(stats.decimal_bug, stats.priced) >= rules.decimal_bug_share:
        flags.append("decimal_bug")
    if (
        stats.median_price is not None
        and stats.median_price < rules.low_median_price
        and stats.source not in rules.low_price_sources
    ):
        flags.append("low_median")
    flags.extend(
        f"high_null:{name}"
        for name in NULLABLE_FIELDS
        if stats.items and stats.null_share(name) > rules.null_share
    )
    if stats.bad_weight and _share(stats.bad_weight, stats.weighed) >= rules.bad_weight_share:
        flags.append("bad_weight")
    if stats.empty_name:
        flags.append("empty_name")
    last = stats.last_completed_observed_at
    if last is None or last < now - timedelta(days=rules.stale_days):
        flags.append("stale")
    return tuple(flags)


def audit(stats: Iterable[SourceStats], rules: QualityRules, now: datetime) -> list[SourceAudit]:
    """Audit every source, sorted by name."""
    return [
        SourceAudit(stats=s, flags=source_flags(s, rules, now))
        for s in sorted(stats, key=lambda s: s.source)
    ]


def check_kind(flag: str) -> str:
    """The asset check a flag belongs to: `high_null:brand` → `high_null`."""
    return flag.split(":", 1)[0]


def flagged_by_check(audits: Iterable[SourceAudit]) -> dict[str, dict[str, list[str]]]:
    """For each check, the flagged sources and their flags of that kind."""
    result: dict[str, dict[str, list[str]]] = {name: {} for name in CHECKS}
    for entry in audits:
        for flag in entry.flags:
            result[check_kind(flag)].setdefault(entry.source, []).append(flag)
    return result
