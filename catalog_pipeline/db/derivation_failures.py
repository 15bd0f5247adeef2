"""The failure ledger of derived assets (classifications, embeddings): per catalog item and
deriver (the deriver's `name@version` key), how often deriving failed, the last error, and
the input (`content_hash`) it failed on.

An item that failed `max_failures` times on the content it still has is *blocked*: the
deriver's item query leaves it out (`blocked`, a correlated `EXISTS` on the ledger's primary
key), so a poison item is not paid for on every run. New content (another `content_hash`)
restarts its count at 1, an explicit retry sends it again, and a success clears its row.

Every function takes an engine (its own transaction) or a connection (the caller's).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import NamedTuple

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    case,
    delete,
    func,
    select,
)

from catalog_pipeline.db.engine import dialect_insert
from catalog_pipeline.db.tables import catalog_items, derivation_failures, utcnow

MAX_FAILURES_VARIABLE = "CATALOG_MAX_DERIVATION_FAILURES"
DEFAULT_MAX_FAILURES = 5
MAX_ERROR_CHARS = 2000
_IDS_PER_STATEMENT = 500  # well under SQLite's bound-parameter limit

_ledger = derivation_failures.c
_items = catalog_items.c


class FailureCounts(NamedTuple):
    """A deriver's ledger: items with a failure on record, and those of them blocked."""

    total: int
    blocked: int


@dataclass(frozen=True, slots=True)
class BlockedItem:
    item_id: int
    sku: str
    attempts: int
    last_error: str
    last_failed_at: datetime


def max_failures_setting() -> int:
    """`CATALOG_MAX_DERIVATION_FAILURES`, else 5: failures on unchanged content after which
    an item is left out until its content changes."""
    value = os.environ.get(MAX_FAILURES_VARIABLE, "").strip()
    if not value:
        return DEFAULT_MAX_FAILURES
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_FAILURES_VARIABLE}={value!r}: expected a whole number, 1 or more")
    return int(value)


@contextmanager
def _connection(connectable: Connection | Engine, write: bool) -> Iterator[Connection]:
    if isinstance(connectable, Connection):
        yield connectable  # the caller's transaction
    elif write:
        with connectable.begin() as connection:
            yield connection
    else:
        with connectable.connect() as connection:
            yield connection


def blocked(
    deriver: str,
    max_failures: int,
    item_id: ColumnElement = _items.id,
    content_hash: ColumnElement = _items.content_hash,
) -> ColumnElement[bool]:
    """Condition for an item query: the item failed `max_failures` times or more with
    `deriver` on the content it still has. Use `~blocked(...)` to leave such items out."""
    return (
        select(_ledger.item_id)
        .where(
            _ledger.item_id == item_id,
            _ledger.deriver == deriver,
            _ledger.attempts >= max_failures,
            _ledger.input_hash == content_hash,
        )
        .exists()
    )


def record_failures(
    connectable: Connection | Engine,
    deriver: str,
    failures: Sequence[tuple[int, str, str]],
    failed_at: datetime | None = None,
) -> int:
    """Count one more failure for each `(item_id, input_hash, error)`: the row's attempts
    go up by one on the same input, restart at 1 on a different one (its content changed);
    the error (trimmed to 2,000 characters) and the time are the latest. An item listed
    twice counts once, with its last error. Returns the number of items recorded.

    `failed_at` (default: now) identifies this failure: a row already recorded at that very
    time on the same input is not counted again, so a retry of the call after a commit whose
    acknowledgement was lost changes nothing (fix the time before retrying)."""
    now = failed_at or utcnow()
    rows = {
        item_id: {
            "item_id": item_id,
            "deriver": deriver,
            "input_hash": input_hash,
            "attempts": 1,
            "last_error": (error or "unknown error")[:MAX_ERROR_CHARS],
            "first_failed_at": now,
            "last_failed_at": now,
        }
        for item_id, input_hash, error in failures
    }
    if not rows:
        return 0
    with _connection(connectable, write=True) as connection:
        statement = dialect_insert(connection)(derivation_failures)
        new = statement.excluded
        same_input = _ledger.input_hash == new.input_hash
        replayed = and_(same_input, _ledger.last_failed_at == new.last_failed_at)
        statement = statement.on_conflict_do_update(
            index_elements=[_ledger.item_id, _ledger.deriver],
            set_={
                "attempts": case(
                    (replayed, _ledger.attempts), (same_input, _ledger.attempts + 1), else_=1
                ),
                "first_failed_at": case(
                    (same_input, _ledger.first_failed_at), else_=new.first_failed_at
                ),
                "input_hash": new.input_hash,
                "last_error": new.last_error,
                "last_failed_at": new.last_failed_at,
            },
        )
        connection.execute(statement, list(rows.values()))
    return len(rows)


def _chunks(values: Iterable[int]) -> Iterator[list[int]]:
    iterator = iter(values)
    while chunk := list(islice(iterator, _IDS_PER_STATEMENT)):
        yield chunk


def clear_failures(connectable: Connection | Engine, deriver: str, item_ids: Iterable[int]) -> int:
    """Forget the failures of `item_ids` with `deriver` (they succeeded). Returns the number
    of rows removed."""
    removed = 0
    with _connection(connectable, write=True) as connection:
        for chunk in _chunks(dict.fromkeys(item_ids)):
            statement = delete(derivation_failures).where(
                _ledger.deriver == deriver, _ledger.item_id.in_(chunk)
            )
            removed += connection.execute(statement).rowcount
    return removed


def failed_item_ids(
    connectable: Connection | Engine, deriver: str, item_ids: Iterable[int]
) -> set[int]:
    """Those of `item_ids` with a failure on record for `deriver`."""
    found: set[int] = set()
    with _connection(connectable, write=False) as connection:
        for chunk in _chunks(dict.fromkeys(item_ids)):
            query = select(_ledger.item_id).where(
                _ledger.deriver == deriver, _ledger.item_id.in_(chunk)
            )
            found.update(connection.execute(query).scalars())
    return found


def blocked_item_ids(connectable: Connection | Engine, deriver: str, max_failures: int) -> set[int]:
    """Ids of the items `deriver` leaves out (see `blocked`); for small catalogs and tests,
    item queries use `blocked` itself."""
    query = select(_items.id).where(blocked(deriver, max_failures))
    with _connection(connectable, write=False) as connection:
        return set(connection.execute(query).scalars())


def failure_counts(
    connectable: Connection | Engine, deriver: str, max_failures: int
) -> FailureCounts:
    """Catalog-wide: items with at least one failure on record for `deriver`, and how many
    of them are blocked (`max_failures` or more on their current content)."""
    is_blocked = and_(_ledger.attempts >= max_failures, _ledger.input_hash == _items.content_hash)
    query = (
        select(func.count(), func.coalesce(func.sum(case((is_blocked, 1), else_=0)), 0))
        .select_from(derivation_failures.outerjoin(catalog_items, _items.id == _ledger.item_id))
        .where(_ledger.deriver == deriver, _ledger.attempts >= 1)
    )
    with _connection(connectable, write=False) as connection:
        total, blocked_count = connection.execute(query).one()
    return FailureCounts(int(total), int(blocked_count))


def blocked_items(
    connectable: Connection | Engine,
    deriver: str,
    max_failures: int,
    scope: Select | None = None,
    limit: int = 10,
) -> list[BlockedItem]:
    """The blocked items (of `scope`, a query of item ids, when given), most attempts and
    latest failure first, at most `limit`: what a materialization shows of them."""
    query = (
        select(_items.id, _items.sku, _ledger.attempts, _ledger.last_error, _ledger.last_failed_at)
        .select_from(derivation_failures.join(catalog_items, _items.id == _ledger.item_id))
        .where(
            _ledger.deriver == deriver,
            _ledger.attempts >= max_failures,
            _ledger.input_hash == _items.content_hash,
        )
        .order_by(_ledger.attempts.desc(), _ledger.last_failed_at.desc(), _items.id)
        .limit(limit)
    )
    if scope is not None:
        query = query.where(_items.id.in_(scope))
    with _connection(connectable, write=False) as connection:
        return [BlockedItem(*row) for row in connection.execute(query)]
