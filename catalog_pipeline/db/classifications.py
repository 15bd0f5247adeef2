"""Queries of `item_classifications`: which items need classifying, storing results, and the
category distribution. Results are keyed by (item, `name@version`), so classifiers and
taxonomy versions never mix, and an item is classified again only when its `content_hash`
differs from the `input_hash` stored with its result (or when forced).

A partition's items are the items with provenance (`catalog_item_sources`) in any version of
the partition's object (`source_files.object_key`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, and_, case, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from catalog_pipeline.core.classification import Classified, ItemText
from catalog_pipeline.db.tables import (
    catalog_item_sources,
    catalog_items,
    item_classifications,
    source_files,
    utcnow,
)

_items = catalog_items.c
_results = item_classifications.c


@dataclass(frozen=True, slots=True)
class Selection:
    """The items to classify now, and how the scope's items split up."""

    items: list[ItemText]  # at most `limit`, in item id order
    total: int  # items in scope
    unchanged: int  # classified with this key and unchanged since (skipped unless forced)
    pending: int  # items that need classifying (before `limit`)

    @property
    def deferred(self) -> int:
        """Pending items left for a later run because of `limit`."""
        return self.pending - len(self.items)


def _scope(object_key: str | None):
    """Item ids of one object's partition, or every item (catalog-wide) when None."""
    if object_key is None:
        return None
    return (
        select(catalog_item_sources.c.item_id)
        .join(source_files, source_files.c.id == catalog_item_sources.c.source_file_id)
        .where(source_files.c.object_key == object_key)
    )


def select_items(
    engine: Engine,
    classifier: str,
    object_key: str | None = None,
    force: bool = False,
    limit: int | None = None,
) -> Selection:
    """The items of `object_key`'s partition (or of the whole catalog) to classify with
    `classifier` (`name@version`): never classified with it, or changed since."""
    joined = catalog_items.outerjoin(
        item_classifications,
        and_(_results.item_id == _items.id, _results.classifier == classifier),
    )
    scope = _scope(object_key)
    in_scope = [] if scope is None else [_items.id.in_(scope)]
    unchanged = _results.input_hash == _items.content_hash
    needs = or_(_results.id.is_(None), _results.input_hash != _items.content_hash)
    counts = select(
        func.count(),
        func.coalesce(func.sum(case((unchanged, 1), else_=0)), 0),
    ).select_from(joined)
    query = (
        select(
            _items.id,
            _items.sku,
            _items.name,
            _items.brand,
            _items.category,
            _items.description,
            _items.content_hash,
        )
        .select_from(joined)
        .where(*in_scope)
        .order_by(_items.id)
    )
    if not force:
        query = query.where(needs)
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as connection:
        total, unchanged_count = connection.execute(counts.where(*in_scope)).one()
        rows = connection.execute(query).all()
    unchanged_count = 0 if force else int(unchanged_count)
    return Selection(
        items=[ItemText(*row) for row in rows],
        total=int(total),
        unchanged=unchanged_count,
        pending=int(total) - unchanged_count,
    )


def store_classifications(
    engine: Engine, classifier: str, items: Sequence[ItemText], results: Sequence[Classified]
) -> int:
    """Upsert results keyed (item, classifier); `input_hash` is the content hash the
    classifier saw. Returns the number of rows written."""
    hashes = {item.item_id: item.content_hash for item in items}
    now = utcnow()
    rows = [
        {
            "item_id": result.item_id,
            "classifier": classifier,
            "category": result.category,
            "confidence": result.confidence,
            "input_hash": hashes[result.item_id],
            "classified_at": now,
        }
        for result in results
    ]
    if not rows:
        return 0
    with engine.begin() as connection:
        insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        statement = insert(item_classifications)
        statement = statement.on_conflict_do_update(
            index_elements=[_results.item_id, _results.classifier],
            set_={
                "category": statement.excluded.category,
                "confidence": statement.excluded.confidence,
                "input_hash": statement.excluded.input_hash,
                "classified_at": statement.excluded.classified_at,
            },
        )
        connection.execute(statement, rows)
    return len(rows)


def category_distribution(
    engine: Engine, classifier: str, object_key: str | None = None
) -> list[tuple[str, int]]:
    """Stored categories of the scope's items for `classifier`, most frequent first."""
    scope = _scope(object_key)
    query = (
        select(_results.category, func.count().label("items"))
        .where(_results.classifier == classifier)
        .group_by(_results.category)
        .order_by(func.count().desc(), _results.category)
    )
    if scope is not None:
        query = query.where(_results.item_id.in_(scope))
    with engine.connect() as connection:
        return [(row.category, int(row.items)) for row in connection.execute(query)]
