"""Per-source statistics for the catalog audit, counted in the database (one pass per query).

Everything is portable SQL (aggregates and window functions), so SQLite and Postgres give the
same numbers; the rules that turn numbers into flags live in `catalog_pipeline.core.quality`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, and_, case, func, literal, or_, select

from catalog_pipeline.core.quality import (
    EMPTY_NAME_PLACEHOLDERS,
    INVISIBLE_CHARACTERS,
    QualityRules,
    SourceStats,
)
from catalog_pipeline.db.tables import catalog_items, source_files

_items = catalog_items.c


def _blank(column):
    return or_(column.is_(None), func.trim(column) == "")


def _normalised_name():
    name = _items.name
    for character in INVISIBLE_CHARACTERS:
        name = func.replace(name, literal(character), literal(""))
    return func.lower(func.trim(name))


def _count(condition):
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


_NULL_CONDITIONS = {
    "price": _items.price.is_(None),
    "brand": _blank(_items.brand),
    "description": _blank(_items.description),
    "weight": _items.weight_grams.is_(None),
    "images": _blank(_items.image_urls),
    "availability": _blank(_items.availability),
}


def _item_counts(engine: Engine, rules: QualityRules) -> dict[str, dict]:
    cents = _items.price * 100
    columns = [
        _items.source,
        func.count().label("items"),
        func.count(_items.price).label("priced"),
        func.count(_items.weight_grams).label("weighed"),
        _count(and_(_items.price < 10, func.abs(cents - func.round(cents)) > 1e-6)).label(
            "decimal_bug"
        ),
        _count(
            or_(
                _items.weight_grams < rules.min_weight_grams,
                _items.weight_grams > rules.max_weight_grams,
            )
        ).label("bad_weight"),
        _count(_normalised_name().in_(EMPTY_NAME_PLACEHOLDERS)).label("empty_name"),
        *(_count(condition).label(f"null_{name}") for name, condition in _NULL_CONDITIONS.items()),
    ]
    query = select(*columns).group_by(_items.source)
    with engine.connect() as connection:
        return {row.source: row._asdict() for row in connection.execute(query)}


def _median_prices(engine: Engine) -> dict[str, float]:
    """The median price per source (mean of the two middle prices for an even count)."""
    ranked = (
        select(
            _items.source,
            _items.price,
            func.row_number()
            .over(partition_by=_items.source, order_by=_items.price)
            .label("position"),
            func.count().over(partition_by=_items.source).label("priced"),
        )
        .where(_items.price.is_not(None))
        .subquery()
    )
    middle = or_(
        ranked.c.position == (ranked.c.priced + 1) // 2,
        ranked.c.position == (ranked.c.priced + 2) // 2,
    )
    query = (
        select(ranked.c.source, func.avg(ranked.c.price).label("median"))
        .where(middle)
        .group_by(ranked.c.source)
    )
    with engine.connect() as connection:
        return {row.source: float(row.median) for row in connection.execute(query)}


def _file_counts(engine: Engine) -> dict[str, dict]:
    files = source_files.c
    completed = files.status == "completed"
    query = select(
        files.source,
        _count(completed).label("files_completed"),
        func.max(case((completed, files.observed_at))).label("last_completed_observed_at"),
        func.coalesce(func.sum(case((completed, files.rows_total), else_=0)), 0).label(
            "rows_total"
        ),
        func.coalesce(func.sum(case((completed, files.rows_invalid), else_=0)), 0).label(
            "rows_invalid"
        ),
    ).group_by(files.source)
    with engine.connect() as connection:
        return {row.source: row._asdict() for row in connection.execute(query)}


def source_stats(engine: Engine, rules: QualityRules) -> list[SourceStats]:
    """Statistics of every source seen in files or items, sorted by source."""
    items = _item_counts(engine, rules)
    medians = _median_prices(engine)
    files = _file_counts(engine)
    stats = []
    for source in sorted(set(items) | set(files)):
        item = items.get(source, {})
        file = files.get(source, {})
        last = file.get("last_completed_observed_at")
        stats.append(
            SourceStats(
                source=source,
                items=int(item.get("items", 0)),
                priced=int(item.get("priced", 0)),
                median_price=medians.get(source),
                nulls={name: int(item.get(f"null_{name}", 0)) for name in _NULL_CONDITIONS},
                decimal_bug=int(item.get("decimal_bug", 0)),
                weighed=int(item.get("weighed", 0)),
                bad_weight=int(item.get("bad_weight", 0)),
                empty_name=int(item.get("empty_name", 0)),
                files_completed=int(file.get("files_completed", 0)),
                # Aggregates over a custom type come back raw on SQLite: normalise here.
                last_completed_observed_at=_as_datetime(last),
                rows_total=int(file.get("rows_total", 0)),
                rows_invalid=int(file.get("rows_invalid", 0)),
            )
        )
    return stats


def _as_datetime(value) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return source_files.c.observed_at.type.process_result_value(value, None)
    return source_files.c.observed_at.type.process_result_value(
        datetime.fromisoformat(str(value)), None
    )


@dataclass(frozen=True, slots=True)
class FileRates:
    """One completed file: when it was scraped and how many of its rows were invalid."""

    source: str
    observed_at: datetime
    rows_total: int
    rows_invalid: int


def completed_file_rates(engine: Engine, since: datetime) -> Sequence[FileRates]:
    """Completed files scraped since `since`, oldest first (input of the invalid-rate chart)."""
    files = source_files.c
    query = (
        select(files.source, files.observed_at, files.rows_total, files.rows_invalid)
        .where(files.status == "completed", files.observed_at >= since)
        .order_by(files.observed_at, files.id)
    )
    with engine.connect() as connection:
        return [
            FileRates(row.source, row.observed_at, row.rows_total or 0, row.rows_invalid or 0)
            for row in connection.execute(query)
        ]
