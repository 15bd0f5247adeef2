"""Playcount SQL: scrape readings at ingest, the provider backfill queue (enqueue, reclaim,
claim, record) and the provider-call ledger that the daily quota is computed from.

Claims are one row per transaction. On Postgres a transaction-scoped advisory lock
serialises the quota check with the claim (two drains can never both take the last unit
of the day), and the row is picked with `FOR UPDATE SKIP LOCKED` so a drain never waits on
a row another transaction holds. SQLite has one writer at a time: the claim is a single
`UPDATE … WHERE id = (SELECT … LIMIT 1) AND <quota left> RETURNING`, the first statement
of its transaction, so choosing and taking the row happen under the same write lock.

The ledger row of a call is written with the claim, before the request goes out: a run
killed during the call still counts the call against the quota.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import (
    Connection,
    Date,
    Engine,
    Float,
    Table,
    and_,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)

from catalog_pipeline.core.playcount import (
    ABANDONED,
    DONE,
    FAILED,
    IN_FLIGHT,
    IN_PROGRESS,
    LEASE_EXPIRED,
    MAX_RETRY_AFTER,
    PENDING,
    UNITS_PER_CALL,
    BackfillPolicy,
    Claim,
    Decision,
    ProviderResponse,
    day_bounds,
)
from catalog_pipeline.db.engine import dialect_insert
from catalog_pipeline.db.tables import (
    UtcDateTime,
    catalog_items,
    playcount_backfill_queue,
    playcount_measurements,
    provider_calls,
)

SCRAPE, PROVIDER = "scrape", "provider"
QUOTA_LOCK_KEY = 0x706C_6179_636F_756E  # pg advisory lock id of the provider quota
CAPPED_SAMPLE = 20
_ERROR_CHARS = 2_000

queue = playcount_backfill_queue


def record_scrape_readings(
    connection: Connection, stage: Table, measured_on: date, now: datetime
) -> None:
    """A `scrape` reading for every staged item with a play count, on the file's scrape day.

    Readings of one item and day from several files (or chunks) merge by maximum: play
    counts only grow, so the highest reading of a day is its latest, and the result does
    not depend on the order chunks and files are ingested in. A re-run writes nothing.
    """
    items = select(catalog_items.c.id, stage.c.sku, stage.c.play_count).where(
        catalog_items.c.sku == stage.c.sku, stage.c.play_count.is_not(None)
    )
    connection.execute(scrape_readings_insert(connection, items.subquery(), measured_on, now))


def scrape_readings_insert(
    connection: Connection,
    items,
    measured_on: date,
    now: datetime,
    ordered: bool = True,
    where=None,
    may_conflict: bool = True,
):
    """The insert of `record_scrape_readings` from any `(id, sku, play_count)` selectable,
    in SKU order (the lock order: see db/ingest.py); sorted here unless `ordered` is False
    because `items` already come in that order. Only rows matching `where` (default: all);
    `may_conflict=False` (items inserted by the same statement, which no reading can name
    yet) writes without ON CONFLICT."""
    rows = select(
        items.c.id,
        literal(SCRAPE),
        literal(measured_on, Date),
        items.c.play_count,
        literal(now, UtcDateTime),
    ).where(items.c.play_count.is_not(None))
    if where is not None:
        rows = rows.where(where)
    statement = dialect_insert(connection)(playcount_measurements).from_select(
        ["item_id", "origin", "measured_on", "play_count", "recorded_at"],
        rows.order_by(items.c.sku) if ordered else rows,
    )
    if not may_conflict:
        return statement
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=["item_id", "origin", "measured_on"],
        set_={"play_count": excluded.play_count, "recorded_at": excluded.recorded_at},
        where=excluded.play_count > playcount_measurements.c.play_count,
    )


def _has_external_id():
    return and_(catalog_items.c.external_id.is_not(None), catalog_items.c.external_id != "")


@dataclass(frozen=True, slots=True)
class ItemFilter:
    """Narrows a backfill to some items (`catalog-pipeline playcounts backfill --source
    --since`): those of one `source`, and those first seen or updated at or after `since`.
    An empty filter (the default) is every item, as the maintenance pass sees them."""

    source: str | None = None
    since: datetime | None = None

    def conditions(self) -> list:
        """The filter as conditions on `catalog_items` (none when it is empty)."""
        conditions = []
        if self.source is not None:
            conditions.append(catalog_items.c.source == self.source)
        if self.since is not None:
            conditions.append(
                or_(
                    catalog_items.c.first_seen_at >= self.since,
                    catalog_items.c.updated_at >= self.since,
                )
            )
        return conditions


def _filtered(items: ItemFilter | None) -> list:
    return [] if items is None else items.conditions()


def _has_provider_history():
    return exists().where(
        playcount_measurements.c.item_id == catalog_items.c.id,
        playcount_measurements.c.origin == PROVIDER,
    )


def _latest_rank():
    """`core.playcount.rank_score` in SQL: the item's latest play count, unknown as 0."""
    return cast(func.coalesce(catalog_items.c.play_count, 0), Float)


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    enqueued: int  # items added to the queue now
    skipped: int  # items with an external_id already queued or with provider history
    reranked: int  # pending rows whose play count changed since they were ranked


def enqueue_missing(
    engine: Engine, now: datetime, items: ItemFilter | None = None
) -> EnqueueResult:
    """Queue every item with an external_id and no provider history, ranked by play count
    (only the items `items` matches, when given; re-ranking and counts are then theirs too).

    An item already in the queue (in any status) is never added again, so a song is
    fetched at most once; pending rows are re-ranked to the item's latest play count.
    """
    has_history = _has_provider_history()
    queued = exists().where(queue.c.item_id == catalog_items.c.id)
    matching = _filtered(items)
    with engine.begin() as connection:
        statement = dialect_insert(connection)(queue).from_select(
            ["item_id", "status", "rank_score", "attempts", "created_at", "updated_at"],
            select(
                catalog_items.c.id,
                literal(PENDING),
                _latest_rank(),
                literal(0),
                literal(now, UtcDateTime),
                literal(now, UtcDateTime),
            ).where(_has_external_id(), ~has_history, ~queued, *matching),
        )
        enqueued = len(
            connection.execute(
                statement.on_conflict_do_nothing(index_elements=["item_id"]).returning(queue.c.id)
            ).all()
        )
        latest = select(_latest_rank()).where(catalog_items.c.id == queue.c.item_id)
        latest = latest.scalar_subquery()
        rerank = update(queue).where(queue.c.status == PENDING, queue.c.rank_score != latest)
        if matching:
            rerank = rerank.where(queue.c.item_id.in_(select(catalog_items.c.id).where(*matching)))
        reranked = connection.execute(rerank.values(rank_score=latest, updated_at=now)).rowcount
        with_id = connection.execute(
            select(func.count()).select_from(catalog_items).where(_has_external_id(), *matching)
        ).scalar_one()
    return EnqueueResult(enqueued, with_id - enqueued, reranked)


@dataclass(frozen=True, slots=True)
class ReclaimResult:
    failed_to_pending: int  # failed rows below the attempts cap
    expired_to_pending: int  # claims older than the lease (their run died)
    expired_to_failed: int  # expired claims that had used their last attempt
    abandoned_calls: int  # ledger rows of calls whose result was never recorded
    at_cap: int  # failed rows that stay failed: attempts cap reached
    at_cap_sample: tuple[str, ...]  # a few of their external_ids

    @property
    def reclaimed(self) -> int:
        return self.failed_to_pending + self.expired_to_pending


def retry_failed_rows(engine: Engine, policy: BackfillPolicy, now: datetime) -> int:
    """Give rows that failed at the attempts cap a fresh start (`retry_failed`): their
    attempts go back to 0 and they are pending again, keeping `last_error` until the
    next outcome. Returns how many."""
    with engine.begin() as connection:
        return connection.execute(
            update(queue)
            .where(queue.c.status == FAILED, queue.c.attempts >= policy.max_attempts)
            .values(status=PENDING, attempts=0, updated_at=now)
        ).rowcount


def reclaim(engine: Engine, policy: BackfillPolicy, now: datetime) -> ReclaimResult:
    """Return retryable failed rows and expired claims to `pending`, in one transaction."""
    cutoff = policy.lease_cutoff(now)
    expired = and_(queue.c.status == IN_PROGRESS, queue.c.claimed_at < cutoff)
    below_cap = queue.c.attempts < policy.max_attempts
    with engine.begin() as connection:
        expired_to_pending = connection.execute(
            update(queue).where(expired, below_cap).values(status=PENDING, updated_at=now)
        ).rowcount
        expired_to_failed = connection.execute(
            update(queue)
            .where(expired, ~below_cap)
            .values(
                status=FAILED,
                outcome=LEASE_EXPIRED,
                last_error=f"claim older than the {policy.lease} lease on the last attempt",
                updated_at=now,
            )
        ).rowcount
        failed_to_pending = connection.execute(
            update(queue)
            .where(queue.c.status == FAILED, below_cap)
            .values(status=PENDING, updated_at=now)
        ).rowcount
        abandoned_calls = connection.execute(
            update(provider_calls)
            .where(provider_calls.c.status == IN_FLIGHT, provider_calls.c.called_at < cutoff)
            .values(status=ABANDONED, error="no result recorded: the run stopped during the call")
        ).rowcount
        capped = and_(queue.c.status == FAILED, ~below_cap)
        at_cap = connection.execute(
            select(func.count()).select_from(queue).where(capped)
        ).scalar_one()
        sample = connection.execute(
            select(catalog_items.c.external_id)
            .join(queue, queue.c.item_id == catalog_items.c.id)
            .where(capped)
            .order_by(queue.c.rank_score.desc(), queue.c.id)
            .limit(CAPPED_SAMPLE)
        ).scalars()
        return ReclaimResult(
            failed_to_pending,
            expired_to_pending,
            expired_to_failed,
            abandoned_calls,
            at_cap,
            tuple(sample),
        )


def _used_today(now: datetime):
    start, end = day_bounds(now)
    return (
        select(func.coalesce(func.sum(provider_calls.c.quota_units), 0))
        .where(provider_calls.c.called_at >= start, provider_calls.c.called_at < end)
        .scalar_subquery()
    )


def quota_used(engine: Engine, now: datetime) -> int:
    """Quota units the ledger holds for the UTC day of `now` (calls in flight included)."""
    with engine.connect() as connection:
        return int(connection.execute(select(_used_today(now))).scalar_one())


def retry_after_until(engine: Engine, now: datetime) -> datetime | None:
    """The end of the latest Retry-After still running at `now`, if any."""
    with engine.connect() as connection:
        return connection.execute(
            select(func.max(provider_calls.c.retry_after_until)).where(
                provider_calls.c.called_at >= now - MAX_RETRY_AFTER,
                provider_calls.c.retry_after_until > now,
            )
        ).scalar_one()


def queue_counts(engine: Engine) -> dict[str, int]:
    """Rows of the queue per status (every status present, zero included)."""
    counts = dict.fromkeys((PENDING, IN_PROGRESS, DONE, FAILED), 0)
    with engine.connect() as connection:
        for status, count in connection.execute(
            select(queue.c.status, func.count()).group_by(queue.c.status)
        ):
            counts[status] = int(count)
    return counts


@dataclass(frozen=True, slots=True)
class BackfillPreview:
    """What a backfill pass over `ItemFilter`'s items would query, read without changing
    anything (`playcounts backfill --dry-run`): each is one provider call."""

    new: int  # items with an external_id, no provider history, not queued yet
    pending: int  # queue rows waiting for their call
    reclaimable: int  # failed rows below the attempts cap and expired claims (reclaim)

    @property
    def items(self) -> int:
        return self.new + self.pending + self.reclaimable


def backfill_preview(
    engine: Engine, policy: BackfillPolicy, now: datetime, items: ItemFilter | None = None
) -> BackfillPreview:
    """Count, in one read, the items a reclaim + enqueue + drain at `now` would query."""
    matching = [_has_external_id(), *_filtered(items)]
    queued = exists().where(queue.c.item_id == catalog_items.c.id)
    new = (
        select(func.count())
        .select_from(catalog_items)
        .where(*matching, ~_has_provider_history(), ~queued)
    )

    def rows(*conditions):
        return (
            select(func.count())
            .select_from(queue.join(catalog_items, catalog_items.c.id == queue.c.item_id))
            .where(*matching, *conditions)
        )

    below_cap = queue.c.attempts < policy.max_attempts
    expired = and_(queue.c.status == IN_PROGRESS, queue.c.claimed_at < policy.lease_cutoff(now))
    reclaimable = or_(and_(queue.c.status == FAILED, below_cap), and_(expired, below_cap))
    with engine.connect() as connection:
        counts = connection.execute(
            select(
                new.scalar_subquery(),
                rows(queue.c.status == PENDING).scalar_subquery(),
                rows(reclaimable).scalar_subquery(),
            )
        ).one()
    return BackfillPreview(*(int(count) for count in counts))


class PlaycountQueue:
    """The queue and ledger as one drain (`worker`) sees them: `core.playcount.DrainStore`.
    With `items`, only the rows of items it matches are claimed."""

    def __init__(self, engine: Engine, worker: str, items: ItemFilter | None = None) -> None:
        self.engine = engine
        self.worker = worker[:100]
        self.items = items

    def quota_used(self, now: datetime) -> int:
        return quota_used(self.engine, now)

    def claim(self, now: datetime, daily_quota: int) -> Claim | None:
        """Take the best-ranked pending row and write its ledger row, if quota is left."""
        with self.engine.begin() as connection:
            postgres = connection.dialect.name == "postgresql"
            if postgres:
                connection.execute(select(func.pg_advisory_xact_lock(QUOTA_LOCK_KEY)))
            candidate = (
                select(queue.c.id)
                .join(catalog_items, catalog_items.c.id == queue.c.item_id)
                .where(queue.c.status == PENDING, _has_external_id(), *_filtered(self.items))
                .order_by(queue.c.rank_score.desc(), queue.c.id)
                .limit(1)
            )
            if postgres:
                candidate = candidate.with_for_update(of=queue, skip_locked=True)
            row = connection.execute(
                update(queue)
                .where(
                    queue.c.id == candidate.scalar_subquery(),
                    _used_today(now) + UNITS_PER_CALL <= daily_quota,
                )
                .values(
                    status=IN_PROGRESS,
                    attempts=queue.c.attempts + 1,
                    claimed_at=now,
                    claimed_by=self.worker,
                    updated_at=now,
                )
                .returning(queue.c.id, queue.c.item_id, queue.c.attempts)
            ).first()
            if row is None:
                return None
            external_id = connection.execute(
                select(catalog_items.c.external_id).where(catalog_items.c.id == row.item_id)
            ).scalar_one()
            call_id = connection.execute(
                provider_calls.insert()
                .values(
                    item_id=row.item_id,
                    external_id=external_id,
                    called_at=now,
                    status=IN_FLIGHT,
                    quota_units=UNITS_PER_CALL,
                )
                .returning(provider_calls.c.id)
            ).scalar_one()
        return Claim(row.id, row.item_id, external_id, row.attempts, call_id)

    def record(
        self, claim: Claim, response: ProviderResponse, decision: Decision, now: datetime
    ) -> int:
        """Store the call's result in the ledger, the row's outcome and any readings."""
        error = decision.error[:_ERROR_CHARS] if decision.error else None
        until = None if decision.retry_after is None else now + decision.retry_after
        with self.engine.begin() as connection:
            connection.execute(
                update(provider_calls)
                .where(provider_calls.c.id == claim.call_id)
                .values(
                    status=response.ledger_status,
                    latency_ms=response.latency_ms,
                    error=error,
                    retry_after_until=until,
                )
            )
            # Only while the claim is still ours: after an expired lease the row may have
            # been reclaimed and claimed again; the readings are kept either way.
            connection.execute(
                update(queue)
                .where(
                    queue.c.id == claim.queue_id,
                    queue.c.status == IN_PROGRESS,
                    queue.c.claimed_by == self.worker,
                )
                .values(
                    status=decision.status,
                    outcome=decision.outcome,
                    last_status=response.ledger_status,
                    last_error=error,
                    updated_at=now,
                )
            )
            _write_provider_readings(connection, claim.item_id, decision, now)
        return len(decision.readings)


def _write_provider_readings(
    connection: Connection, item_id: int, decision: Decision, now: datetime
) -> None:
    if not decision.readings:
        return
    rows = [
        {
            "item_id": item_id,
            "origin": PROVIDER,
            "measured_on": reading.measured_on,
            "play_count": reading.play_count,
            "recorded_at": now,
        }
        for reading in decision.readings
    ]
    connection.execute(
        dialect_insert(connection)(playcount_measurements).on_conflict_do_nothing(
            index_elements=["item_id", "origin", "measured_on"]
        ),
        rows,
    )


def measurements(engine: Engine, item_ids: Sequence[int] | None = None) -> list[tuple]:
    """(item_id, origin, measured_on, play_count) rows, ordered; all items by default."""
    query = select(
        playcount_measurements.c.item_id,
        playcount_measurements.c.origin,
        playcount_measurements.c.measured_on,
        playcount_measurements.c.play_count,
    ).order_by(
        playcount_measurements.c.item_id,
        playcount_measurements.c.origin,
        playcount_measurements.c.measured_on,
    )
    if item_ids is not None:
        query = query.where(playcount_measurements.c.item_id.in_(list(item_ids)))
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def provider_history_days(engine: Engine) -> int:
    """Readings the provider has given us, all items together."""
    with engine.connect() as connection:
        return connection.execute(
            select(func.count())
            .select_from(playcount_measurements)
            .where(playcount_measurements.c.origin == PROVIDER)
        ).scalar_one()
