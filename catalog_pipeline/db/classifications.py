"""Queries of `item_classifications`: which items need classifying, storing results, and the
category distribution. Results are keyed by (item, `name@version`), so classifiers and
taxonomy versions never mix, and an item is classified again only when its `content_hash`
differs from the `input_hash` stored with its result (or when forced).

Failures go to the ledger of `db.derivation_failures` (deriver = the classifier key): an
item that failed `max_failures` times on unchanged content is left out of the items to
classify (`max_failures=None`: nothing is left out), and a stored result clears its row.

A partition's items are the items with provenance (`catalog_item_sources`) in any version of
the partition's object (`source_files.object_key`).

Each function is one short read or one transaction, so a caller may retry it whole on a
transient error (`core.retry.retrying`); `iter_items` takes the retry rule for its pages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, and_, case, func, literal, or_, select, true

from catalog_pipeline.core.classification import Classified, Failed, ItemText
from catalog_pipeline.db.derivation_failures import (
    BlockedItem,
    blocked,
    blocked_items,
    clear_failures,
    record_failures,
)
from catalog_pipeline.db.engine import dialect_insert
from catalog_pipeline.db.tables import (
    catalog_item_sources,
    catalog_items,
    item_classifications,
    source_files,
    utcnow,
)

_items = catalog_items.c
_results = item_classifications.c

# How a page read is attempted: `core.retry.retrying`'s shape, (call, what) -> its result.
PageRead = Callable[[Callable[[], list], str], list]


def _once(call: Callable[[], list], what: str) -> list:
    return call()


@dataclass(frozen=True, slots=True)
class ScopeCounts:
    """How a scope's items split up for one classifier."""

    total: int  # items in scope
    unchanged: int  # classified with this key and unchanged since (skipped unless forced)
    blocked: int = 0  # would need classifying, but failed too often on this content

    @property
    def pending(self) -> int:
        """Items that need classifying now."""
        return self.total - self.unchanged - self.blocked


def _scope(object_key: str | None):
    """Item ids of one object's partition, or every item (catalog-wide) when None."""
    if object_key is None:
        return None
    return (
        select(catalog_item_sources.c.item_id)
        .join(source_files, source_files.c.id == catalog_item_sources.c.source_file_id)
        .where(source_files.c.object_key == object_key)
    )


def _with_results(classifier: str):
    return catalog_items.outerjoin(
        item_classifications,
        and_(_results.item_id == _items.id, _results.classifier == classifier),
    )


def _in_scope(object_key: str | None) -> list:
    scope = _scope(object_key)
    return [] if scope is None else [_items.id.in_(scope)]


def _needs(force: bool):
    """Never classified with the joined classifier, or changed since (everything when forced)."""
    if force:
        return true()
    return or_(_results.id.is_(None), _results.input_hash != _items.content_hash)


def _count(condition):
    """How many rows meet `condition` (0, not NULL, when there are none)."""
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def count_items(
    engine: Engine,
    classifier: str,
    object_key: str | None = None,
    force: bool = False,
    max_failures: int | None = None,
) -> ScopeCounts:
    """Items of `object_key`'s partition (or of the whole catalog), how many of them are
    unchanged since `classifier` (`name@version`) classified them (0 when forced), and how
    many of the others failed `max_failures` times on their content (0 when None)."""
    unchanged = _results.input_hash == _items.content_hash
    left_out = (
        _count(and_(_needs(force), blocked(classifier, max_failures)))
        if max_failures is not None
        else literal(0)
    )
    query = (
        select(func.count(), _count(unchanged), left_out)
        .select_from(_with_results(classifier))
        .where(*_in_scope(object_key))
    )
    with engine.connect() as connection:
        total, unchanged_count, blocked_count = connection.execute(query).one()
    return ScopeCounts(int(total), 0 if force else int(unchanged_count), int(blocked_count))


def iter_items(
    engine: Engine,
    classifier: str,
    object_key: str | None = None,
    force: bool = False,
    limit: int | None = None,
    page_size: int = 1000,
    max_failures: int | None = None,
    retry: PageRead = _once,
) -> Iterator[ItemText]:
    """The scope's items to classify with `classifier`, never classified with it or changed
    since (every item when forced), in item id order, at most `limit`; without the items
    that failed `max_failures` times on their current content (unless it is None).

    Read in pages by id (one short read per page), so a million-item scope never sits in
    memory and results stored between pages do not disturb the iteration. Each page read
    goes through `retry(read, what)` (e.g. `core.retry.retrying`): it starts from the last
    id yielded, so retrying it repeats nothing.
    """
    columns = (
        _items.id,
        _items.sku,
        _items.name,
        _items.brand,
        _items.category,
        _items.description,
        _items.content_hash,
    )
    base = (
        select(*columns)
        .select_from(_with_results(classifier))
        .where(*_in_scope(object_key), _needs(force))
    )
    if max_failures is not None:
        base = base.where(~blocked(classifier, max_failures))
    remaining = limit
    after = None
    while remaining is None or remaining > 0:
        size = page_size if remaining is None else min(page_size, remaining)
        query = base.order_by(_items.id).limit(size)
        if after is not None:
            query = query.where(_items.id > after)
        rows = retry(
            lambda query=query: _read(engine, query),
            f"{object_key or 'the catalog'}: reading items to classify after id {after or 0}",
        )
        yield from (ItemText(*row) for row in rows)
        if len(rows) < size:
            return
        after = rows[-1][0]
        if remaining is not None:
            remaining -= len(rows)


def _read(engine: Engine, query) -> list:
    with engine.connect() as connection:
        return connection.execute(query).all()


def store_classifications(
    engine: Engine, classifier: str, items: Sequence[ItemText], results: Sequence[Classified]
) -> int:
    """Upsert results keyed (item, classifier); `input_hash` is the content hash the
    classifier saw. The items' failures with `classifier` are cleared in the same
    transaction. Returns the number of rows written."""
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
        statement = dialect_insert(connection)(item_classifications)
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
        clear_failures(connection, classifier, [row["item_id"] for row in rows])
    return len(rows)


def record_classification_failures(
    engine: Engine,
    classifier: str,
    items: Sequence[ItemText],
    failed: Sequence[Failed],
    failed_at: datetime | None = None,
) -> int:
    """One more failure in the ledger for each failed item, against the content hash the
    classifier saw, in one transaction. Returns the number of items recorded. Give the same
    `failed_at` to every retry of a call: it is then counted once (see `record_failures`)."""
    hashes = {item.item_id: item.content_hash for item in items}
    return record_failures(
        engine, classifier, [(f.item_id, hashes[f.item_id], f.reason) for f in failed], failed_at
    )


def skipped_after_failures(
    engine: Engine,
    classifier: str,
    max_failures: int,
    object_key: str | None = None,
    limit: int = 10,
) -> list[BlockedItem]:
    """The scope's items left out because they failed too often, most attempts first."""
    return blocked_items(engine, classifier, max_failures, _scope(object_key), limit)


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
