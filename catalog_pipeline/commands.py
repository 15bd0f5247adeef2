"""`catalog-pipeline classify | playcounts backfill | retention | history`: the work of an
asset or a schedule, run from a terminal with the same code, settings and defaults.

- `classify` runs `classify_scope`, the function of the `item_classifications` asset and of
  `reclassify_catalog_job`, over the whole catalog, with the classifier of the environment.
- `playcounts backfill` runs `maintenance_pass` (`catalog_pipeline.playcount`), the pass of
  `playcount_history` (reclaim, enqueue, drain within the daily quota), narrowed to some
  items when asked; it shows what the pass would cost before it spends anything.
- `retention` deletes what `invalid_log_retention_job` deletes, with its default windows
  and batch limits, or (dry run) counts it.
- `history SKU` shows an item's `catalog_item_history`: each change of price, currency,
  availability or listing, with the file it came from.

Each prints a human summary, or with `--json` one JSON object as the last line of stdout;
progress goes to stderr (`catalog_pipeline.progress`).
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from catalog_pipeline.core.errors import PermanentError
from catalog_pipeline.core.retry import retrying
from catalog_pipeline.progress import Progress, progress_wanted

if TYPE_CHECKING:
    from catalog_pipeline.core.classification import Classifier, ItemText, Outcome
    from catalog_pipeline.resources.classifier import ClassifierResource


class CommandFailed(PermanentError):
    """The work stopped on an error a rerun will not fix by itself (a classifier outage
    past its retries, a refused key); the message says what was kept."""


def _stderr(line: str, progress: Progress) -> None:
    """A warning: above the bar when one is shown, else plainly on stderr (also with
    `--json`, whose stdout it never touches)."""
    if progress.enabled:
        progress.note(line)
    else:
        print(line, file=sys.stderr, flush=True)


# classify


class _CommandLog:
    """The `log` that `classify_scope` writes to: its warnings (items not classified,
    items skipped after failures) go to stderr; its info line is what the summary says."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def info(self, message: str) -> None:
        pass

    def warning(self, message: str) -> None:
        _stderr(f"warning: {message}", self.progress)


class _CountingClassifier:
    """The classifier, advancing the progress bar by each batch it answers."""

    def __init__(self, classifier: Classifier, progress: Progress) -> None:
        self._classifier = classifier
        self._progress = progress

    def __getattr__(self, name: str):
        return getattr(self._classifier, name)

    def classify(self, items: Sequence[ItemText]) -> list[Outcome]:
        outcomes = self._classifier.classify(items)
        self._progress.advance(len(items))
        return outcomes


class _CountingClassifierResource:
    """`ClassifierResource` as `classify_scope` uses it (`build()`), with the counting
    classifier: the asset's function runs unchanged and still reports progress."""

    def __init__(self, resource: ClassifierResource, progress: Progress) -> None:
        self._resource = resource
        self._progress = progress

    def build(self) -> _CountingClassifier:
        return _CountingClassifier(self._resource.build(), self._progress)


def run_classify_command(
    database_url: str | None,
    *,
    limit: int | None,
    force: bool,
    retry_failed: bool,
    json_mode: bool,
) -> int:
    """Classify the catalog's new and changed items (all with `force`), at most `limit`."""
    import dagster as dg

    from catalog_pipeline.assets.classifications import ClassificationConfig, classify_scope
    from catalog_pipeline.core.classification import ClassifierError, classifier_key
    from catalog_pipeline.db.classifications import count_items
    from catalog_pipeline.db.derivation_failures import max_failures_setting
    from catalog_pipeline.resources.catalog import CatalogDatabase, default_resources

    config = ClassificationConfig(force=force, limit=limit, retry_failed=retry_failed)
    catalog_db = CatalogDatabase(url=database_url)
    engine = catalog_db.engine()
    resource = default_resources()["classifier"].process_config_and_initialize()
    try:
        key = classifier_key(resource.build())
    except ClassifierError as error:
        raise CommandFailed(str(error)) from None
    max_failures = max_failures_setting()
    leave_out = None if retry_failed else max_failures
    counts = retrying(
        lambda: count_items(engine, key, None, force, leave_out), "counting items to classify"
    )
    planned = counts.pending if limit is None else min(limit, counts.pending)
    with Progress(f"classify ({key})", planned, enabled=progress_wanted(json_mode)) as progress:
        try:
            metadata = classify_scope(
                _CommandLog(progress),
                config,
                catalog_db,
                _CountingClassifierResource(resource, progress),
                None,
            )
        except dg.Failure as failure:
            raise CommandFailed(failure.description or "classification failed") from None
    summary = {
        "classifier": metadata["classifier"],
        "classified": metadata["classified"],
        "skipped": metadata["skipped"],
        "failed": metadata["failed"],
        "blocked": metadata["items_skipped_after_failures"],
        "deferred": metadata["deferred"],
        "items": metadata["items"],
        "seconds": metadata["seconds"],
        "distribution": [
            {"category": record.data["category"], "items": record.data["items"]}
            for record in metadata["distribution"].records
        ],
        "failures": metadata["failures"].data if "failures" in metadata else {},
    }
    if json_mode:
        print(json.dumps(summary))
        return 0
    print(
        f"{summary['classifier']}: {summary['classified']:,} classified, "
        f"{summary['skipped']:,} skipped (unchanged), {summary['failed']:,} failed, "
        f"{summary['blocked']:,} left out after repeated failures (--retry-failed sends "
        f"them), {summary['deferred']:,} deferred by --limit; {summary['items']:,} items "
        f"({summary['seconds']:.1f}s)"
    )
    for record in summary["distribution"][:10]:
        print(f"  {record['items']:>8,}  {record['category']}")
    for sku, reason in list(summary["failures"].items())[:10]:
        print(f"  failed: {sku}: {reason}")
    return 0


# playcounts backfill


def parse_since(text: str) -> datetime:
    """`--since`: an ISO date (midnight UTC) or an ISO timestamp (UTC when it has no zone)."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r} is not a date: give YYYY-MM-DD or an ISO timestamp"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _worker_name() -> str:
    """Who claims queue rows in this pass, as the ledger and `claimed_by` show it."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name in a bare container
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}:{os.getpid()}"


def run_backfill_command(
    database_url: str | None,
    *,
    source: str | None,
    since: str | None,
    dry_run: bool,
    json_mode: bool,
) -> int:
    """One maintenance pass of the playcount backfill (reclaim, enqueue, drain within the
    daily quota) over the items `source`/`since` select, after a cost preview."""
    from catalog_pipeline.assets.playcount import PlaycountConfig
    from catalog_pipeline.core.playcount import UNITS_PER_CALL, quota_left
    from catalog_pipeline.db.playcount import ItemFilter, backfill_preview, quota_used
    from catalog_pipeline.playcount import drain_blocked, maintenance_pass
    from catalog_pipeline.resources.catalog import CatalogDatabase
    from catalog_pipeline.resources.provider import default_stats_provider

    items = ItemFilter(source=source, since=None if since is None else parse_since(since))
    config = PlaycountConfig()  # the maintenance schedule's defaults
    policy, clock = config.policy(), config.clock()
    engine = CatalogDatabase(url=database_url).engine()
    provider = default_stats_provider().process_config_and_initialize()
    now = clock()
    preview = retrying(lambda: backfill_preview(engine, policy, now, items), "backfill preview")
    used = retrying(lambda: quota_used(engine, now), "playcount quota")
    left = quota_left(provider.daily_quota, used)
    blocked = drain_blocked(provider, engine, clock)
    calls_now = 0 if blocked else min(preview.items, left // UNITS_PER_CALL)
    cost = {
        "source": source,
        "since": None if items.since is None else items.since.isoformat(),
        "items": preview.items,
        "new": preview.new,
        "pending": preview.pending,
        "reclaimable": preview.reclaimable,
        "calls_needed": preview.items,
        "quota_units_needed": preview.items * UNITS_PER_CALL,
        "daily_quota": provider.daily_quota,
        "quota_used_today": used,
        "quota_left_today": left,
        "calls_this_run": calls_now,
        "drain_skipped": blocked[1] if blocked else None,
    }
    if not json_mode:
        print(_format_cost(cost, dry_run), flush=True)
    if dry_run:
        if json_mode:
            print(json.dumps({"dry_run": True, "preview": cost}))
        return 0

    enabled = progress_wanted(json_mode) and calls_now > 0
    with Progress("playcounts", calls_now, "calls", enabled=enabled) as progress:
        report = maintenance_pass(
            engine,
            provider,
            policy,
            worker=_worker_name(),
            clock=clock,
            items=items,
            max_calls=config.max_calls,
            max_consecutive_failures=config.max_consecutive_failures,
            on_call=progress.advance,
        )
    result = {
        "reclaimed": report.reclaimed.reclaimed,
        "enqueued": report.enqueued.enqueued,
        "calls": report.calls,
        "outcomes": report.outcomes,
        "readings": report.readings,
        "stopped_by": report.stopped_by,
        "notice": report.notice,
        "quota_used_today": report.quota_used,
        "queue": report.queue,
    }
    if json_mode:
        print(json.dumps({"dry_run": False, "preview": cost, "result": result}))
        return 0
    if report.notice:
        print(f"notice: {report.notice}", file=sys.stderr)
    done = ", ".join(f"{count:,} {name}" for name, count in report.outcomes.items() if count)
    queue = result["queue"]
    print(
        f"backfill: reclaimed {result['reclaimed']:,}, enqueued {result['enqueued']:,}, "
        f"{report.calls:,} provider call(s){f' ({done})' if done else ''}, "
        f"{report.readings:,} readings stored; stopped by {report.stopped_by}; quota used "
        f"today {result['quota_used_today']:,}/{provider.daily_quota:,}; queue: "
        f"{queue['pending']:,} pending, {queue['failed']:,} failed, {queue['done']:,} done"
    )
    return 0


def _format_cost(cost: dict, dry_run: bool) -> str:
    scope = []
    if cost["source"]:
        scope.append(f"source {cost['source']!r}")
    if cost["since"]:
        scope.append(f"first seen or updated since {cost['since']}")
    lines = [
        f"playcount backfill{' (dry run: nothing is changed)' if dry_run else ''}"
        f"{': ' + ', '.join(scope) if scope else ''}",
        f"  items to query:     {cost['items']:,} ({cost['new']:,} not queued yet, "
        f"{cost['pending']:,} pending, {cost['reclaimable']:,} to retry)",
        f"  provider calls:     {cost['calls_needed']:,} ({cost['quota_units_needed']:,} quota "
        "units)",
        f"  quota left today:   {cost['quota_left_today']:,} of {cost['daily_quota']:,} "
        f"({cost['quota_used_today']:,} used)",
    ]
    if cost["drain_skipped"]:
        lines.append(f"  calls this run:     0: {cost['drain_skipped']}")
    else:
        more = cost["calls_needed"] - cost["calls_this_run"]
        later = f" ({more:,} wait for the next days' quota)" if more > 0 else ""
        lines.append(f"  calls this run:     {cost['calls_this_run']:,}{later}")
    return "\n".join(lines)


# retention


def run_retention_command(
    database_url: str | None,
    *,
    dry_run: bool,
    json_mode: bool,
    invalid_log_days: int | None = None,
    provider_call_days: int | None = None,
) -> int:
    """Delete (or with `dry_run` count) invalid-row logs and provider calls past their
    retention windows, as `invalid_log_retention_job` does with its defaults."""
    from catalog_pipeline.db import retention as db
    from catalog_pipeline.resources.catalog import CatalogDatabase
    from catalog_pipeline.schedules.retention import RetentionConfig

    defaults = RetentionConfig()
    windows = {
        "invalid_item_logs": (
            invalid_log_days if invalid_log_days is not None else defaults.invalid_log_days,
            db.delete_expired_invalid_logs,
            db.count_expired_invalid_logs,
        ),
        "provider_calls": (
            provider_call_days if provider_call_days is not None else defaults.provider_call_days,
            db.delete_expired_provider_calls,
            db.count_expired_provider_calls,
        ),
    }
    for table, (days, _, _) in windows.items():
        if days < 0:
            raise ValueError(f"the retention window of {table} must be 0 days or more, not {days}")
    engine = CatalogDatabase(url=database_url).engine()
    now = datetime.now(UTC)
    limit = defaults.batch_size * defaults.max_batches
    tables = []
    for table, (days, delete, count) in windows.items():
        cutoff = now - timedelta(days=days)
        if dry_run:
            expired = retrying(lambda count=count, cutoff=cutoff: count(engine, cutoff), table)
            entry = {
                "table": table,
                "days": days,
                "cutoff": cutoff.isoformat(),
                "expired": expired,
                "deleted": 0,
                "would_delete": min(expired, limit),
                "batches": -(-min(expired, limit) // defaults.batch_size),
                "capped": expired > limit,
            }
        else:
            # As the job does: not retried whole (a retry would not know what was deleted).
            result = delete(
                engine, cutoff, batch_size=defaults.batch_size, max_batches=defaults.max_batches
            )
            entry = {
                "table": table,
                "days": days,
                "cutoff": cutoff.isoformat(),
                "deleted": result.deleted,
                "batches": result.batches,
                "capped": result.capped,
            }
        tables.append(entry)
    if json_mode:
        print(json.dumps({"dry_run": dry_run, "tables": tables}))
        return 0
    for entry in tables:
        older = f"older than {entry['days']} days (before {entry['cutoff'][:16]} UTC)"
        if dry_run:
            line = (
                f"{entry['table']}: {entry['expired']:,} rows {older}; would delete "
                f"{entry['would_delete']:,} in {entry['batches']} batch(es) (dry run: nothing "
                "deleted)"
            )
        else:
            line = (
                f"{entry['table']}: deleted {entry['deleted']:,} rows {older} in "
                f"{entry['batches']} batch(es)"
            )
        if entry["capped"]:
            line += "; the batch cap was reached: rows remain for the next run"
        print(line)
    return 0


# history


def run_history_command(database_url: str | None, sku: str, *, json_mode: bool) -> int:
    """Print one item's history (exit 1 when no item has the SKU)."""
    from catalog_pipeline.db.history import item_history
    from catalog_pipeline.resources.catalog import CatalogDatabase

    engine = CatalogDatabase(url=database_url).engine()
    item, entries = retrying(lambda: item_history(engine, sku), f"history of {sku!r}")
    if item is None:
        message = f"no catalog item has SKU {sku!r}"
        if json_mode:
            print(json.dumps({"sku": sku, "error": message}))
        else:
            print(f"catalog-pipeline: {message}", file=sys.stderr)
        return 1
    rows = []
    previous = None
    for entry in entries:
        rows.append(
            {
                "observed_at": entry.observed_at.isoformat(),
                "price": entry.price,
                "currency": entry.currency,
                "availability": entry.availability,
                "listed": entry.listed,
                "changes": history_changes(previous, entry),
                "object_key": entry.object_key,
                "byte_offset": entry.byte_offset,
            }
        )
        previous = entry
    if json_mode:
        current = {
            key: value.isoformat() if isinstance(value, datetime) else value
            for key, value in item.items()
            if key != "id"
        }
        print(json.dumps({"sku": sku, "item": current, "history": rows}))
        return 0
    state = "delisted" if item["delisted_at"] else "listed"
    print(
        f"{sku}: {item['name']} (source {item['source']}, {state}; price "
        f"{_money(item['price'], item['currency'])}, {item['availability'] or 'availability unknown'})"
    )
    if not rows:
        print("no history recorded")
    for row in rows:
        print(
            f"{row['observed_at'][:19].replace('T', ' ')}  {'; '.join(row['changes'])}  ({row['object_key']})"
        )
    return 0


def history_changes(previous, entry) -> list[str]:
    """What one history row changed against the row before it, in words."""
    if previous is None:
        return [
            f"first listed at {_money(entry.price, entry.currency)}, {entry.availability or 'availability unknown'}"
        ]
    changes = []
    if entry.listed != previous.listed:
        changes.append("listed again" if entry.listed else "delisted")
    if (entry.price, entry.currency) != (previous.price, previous.currency):
        changes.append(
            f"price {_money(previous.price, previous.currency)} → {_money(entry.price, entry.currency)}"
        )
    if entry.availability != previous.availability:
        changes.append(f"availability {previous.availability or '-'} → {entry.availability or '-'}")
    return changes or ["no change"]


def _money(price: float | None, currency: str | None) -> str:
    if price is None:
        return "no price"
    return f"{price:,.2f}{f' {currency}' if currency else ''}"
