"""`item_classifications`: the category of every item a `source_csvs` partition touched, by
the active classifier; and `reclassify_catalog_job` for the whole catalog (after a taxonomy
change), bounded by `limit`.

Materialized automatically after `catalog_items` (its own run, so a classifier outage never
fails an ingest), in pool `classifier` (limit 1: two runs never call the model at once).
Every item the classifier answers about invalidly (a category outside the taxonomy, no
usable answer for it) is counted in the failure ledger (`derivation_failures`); one that
failed `max_failures` times on unchanged content is skipped until it changes or a run sets
`retry_failed`, so no run pays for it again. An outage (the endpoint down, failing after
its retries, refusing the key) fails the run and blames no item: nothing goes to the ledger.

Every database read and write of a run is one short read or one transaction, retried on
transient errors by the pipeline's retry rule (`core.retry.retrying`).
"""

import time
from collections.abc import Sequence

import dagster as dg
from sqlalchemy import Engine

from catalog_pipeline.assets.ingest import CATALOG_ITEMS
from catalog_pipeline.assets.partitions import object_key_for, source_csvs
from catalog_pipeline.core.classification import (
    ClassificationSummary,
    Classified,
    ClassifierError,
    Failed,
    ItemText,
    classifier_key,
    classify_in_batches,
)
from catalog_pipeline.core.retry import retrying
from catalog_pipeline.db.classifications import (
    ScopeCounts,
    category_distribution,
    count_items,
    iter_items,
    record_classification_failures,
    skipped_after_failures,
    store_classifications,
)
from catalog_pipeline.db.derivation_failures import (
    BlockedItem,
    failure_counts,
    max_failures_setting,
)
from catalog_pipeline.db.tables import utcnow
from catalog_pipeline.resources.catalog import CatalogDatabase
from catalog_pipeline.resources.classifier import ClassifierResource
from catalog_pipeline.workers import DERIVED_TAGS

ITEM_CLASSIFICATIONS = dg.AssetKey("item_classifications")
CLASSIFIER_POOL = "classifier"
RECLASSIFY_JOB = "reclassify_catalog_job"
FAILURES_SHOWN = 20
SKIPPED_SHOWN = 10
ERROR_CHARS_SHOWN = 300


class ClassificationConfig(dg.Config):
    """`force`: classify even items unchanged since their stored result. `limit`: at most
    this many items in this run (the rest wait for the next run). `max_failures`: skip items
    that failed this often on unchanged content (default `CATALOG_MAX_DERIVATION_FAILURES`,
    else 5); `retry_failed`: send them again anyway."""

    force: bool = False
    limit: int | None = None
    max_failures: int | None = None
    retry_failed: bool = False


def _items(count: int) -> str:
    return f"{count:,} item{'s' * (count != 1)}"


def failure_limit(config: ClassificationConfig) -> int:
    """The run's `max_failures`: from config, else from the environment."""
    if config.max_failures is not None:
        if config.max_failures < 1:
            raise dg.Failure(
                description=f"max_failures must be 1 or more, not {config.max_failures}"
            )
        return config.max_failures
    try:
        return max_failures_setting()
    except ValueError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error


def skipped_table(skipped: list[BlockedItem]) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        [
            dg.TableRecord(
                {
                    "sku": item.sku,
                    "attempts": item.attempts,
                    "last_error": item.last_error[:ERROR_CHARS_SHOWN],
                }
            )
            for item in skipped
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("sku", "string"),
                dg.TableColumn("attempts", "int"),
                dg.TableColumn("last_error", "string"),
            ]
        ),
    )


def ledger_metadata(
    engine: Engine,
    key: str,
    object_key: str | None,
    counts: ScopeCounts,
    summary: ClassificationSummary,
    max_failures: int,
) -> dict:
    """This run's failures and skipped items, the ledger's totals for the classifier, and
    the first skipped items with their last error."""
    scope = object_key or "the catalog"
    ledger = retrying(
        lambda: failure_counts(engine, key, max_failures), f"{scope}: counting ledger failures"
    )
    metadata = {
        "classification_failures": summary.failed,
        "items_skipped_after_failures": counts.blocked,
        "total_classification_failures": ledger.total,
        "total_items_blocked_after_failures": ledger.blocked,
    }
    if counts.blocked:
        skipped = retrying(
            lambda: skipped_after_failures(engine, key, max_failures, object_key, SKIPPED_SHOWN),
            f"{scope}: reading skipped items",
        )
        metadata["skipped_after_failures"] = skipped_table(skipped)
    return metadata


def distribution_table(distribution: list[tuple[str, int]]) -> dg.TableMetadataValue:
    total = sum(count for _, count in distribution) or 1
    return dg.MetadataValue.table(
        [
            dg.TableRecord(
                {"category": category, "items": count, "share_%": round(100 * count / total, 1)}
            )
            for category, count in distribution
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("category", "string"),
                dg.TableColumn("items", "int"),
                dg.TableColumn("share_%", "float"),
            ]
        ),
    )


def classify_scope(
    log: dg.DagsterLogManager,
    config: ClassificationConfig,
    catalog_db: CatalogDatabase,
    resource: ClassifierResource,
    object_key: str | None,
) -> dict:
    """Classify the scope's new and changed items (one object's, or the whole catalog when
    `object_key` is None); returns the materialization metadata."""
    started = time.monotonic()
    scope = object_key or "the catalog"
    if config.limit is not None and config.limit < 0:
        raise dg.Failure(description=f"limit must be 0 or more, not {config.limit}")
    max_failures = failure_limit(config)
    leave_out = None if config.retry_failed else max_failures
    try:
        classifier = resource.build()
        key = classifier_key(classifier)
    except ClassifierError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error
    engine = catalog_db.engine()
    counts = retrying(
        lambda: count_items(engine, key, object_key, config.force, leave_out),
        f"{scope}: counting items to classify",
    )
    planned = counts.pending if config.limit is None else min(config.limit, counts.pending)
    log.info(
        f"{scope}: {counts.total:,} items, {counts.unchanged:,} unchanged, "
        f"{counts.blocked:,} skipped after {max_failures} failures, "
        f"classifying {planned:,} with {key}"
    )
    stored = failed = 0

    # Each retried call is one transaction: an upsert (and the clearing of the items'
    # failures), or one more failure per item, identified by its time so it counts once.
    def store(batch: Sequence[ItemText], results: list[Classified]) -> None:
        nonlocal stored
        stored += retrying(
            lambda: store_classifications(engine, key, batch, results),
            f"{scope}: storing the results of {_items(len(results))}",
        )

    def on_failed(batch: Sequence[ItemText], failures: list[Failed]) -> None:
        nonlocal failed
        failed_at = utcnow()
        failed += retrying(
            lambda: record_classification_failures(engine, key, batch, failures, failed_at),
            f"{scope}: recording the failures of {_items(len(failures))}",
        )

    items = iter_items(
        engine,
        key,
        object_key,
        config.force,
        config.limit,
        max_failures=leave_out,
        retry=retrying,
    )
    try:
        summary = classify_in_batches(classifier, items, store, on_failed)
    except ClassifierError as error:
        raise dg.Failure(
            description=f"{scope}: classifier {key} failed after storing {stored:,} of "
            f"{planned:,} items (stored results are kept; the next run continues with the "
            f"rest): {error}",
            metadata={
                "classifier": key,
                "classified": stored,
                "classification_failures": failed,
                "object_key": scope,
            },
        ) from error
    for sku, reason in summary.failures[:FAILURES_SHOWN]:
        log.warning(f"{scope}: item {sku!r} not classified: {reason}")
    if counts.blocked:
        log.warning(
            f"{scope}: {counts.blocked:,} items skipped: they failed {max_failures}+ times on "
            "their current content (set retry_failed to send them again)"
        )
    distribution = retrying(
        lambda: category_distribution(engine, key, object_key),
        f"{scope}: reading the category distribution",
    )
    metadata = {
        "classifier": key,
        "classified": summary.classified,
        "skipped": counts.unchanged,
        "failed": summary.failed,
        "deferred": counts.pending - summary.attempted,
        "items": counts.total,
        "dagster/row_count": sum(count for _, count in distribution),
        "distribution": distribution_table(distribution),
        **ledger_metadata(engine, key, object_key, counts, summary, max_failures),
        "seconds": round(time.monotonic() - started, 3),
    }
    if summary.failures:
        metadata["failures"] = dg.MetadataValue.json(dict(summary.failures[:FAILURES_SHOWN]))
    if hasattr(classifier, "requests_made"):
        metadata["requests"] = classifier.requests_made
    return metadata


@dg.asset(
    key=ITEM_CLASSIFICATIONS,
    deps=[CATALOG_ITEMS],
    partitions_def=source_csvs,
    group_name="classification",
    pool=CLASSIFIER_POOL,
    op_tags=DERIVED_TAGS,
    automation_condition=dg.AutomationCondition.eager(),
)
def item_classifications(
    context: dg.AssetExecutionContext,
    config: ClassificationConfig,
    catalog_db: CatalogDatabase,
    classifier: ClassifierResource,
) -> dg.MaterializeResult:
    """Category of each item this file touched, by the active classifier (`CLASSIFIER`):
    only new or changed items are classified, so no item is paid for twice."""
    object_key = object_key_for(context.partition_key)
    return dg.MaterializeResult(
        metadata=classify_scope(context.log, config, catalog_db, classifier, object_key)
    )


@dg.op(pool=CLASSIFIER_POOL, tags=DERIVED_TAGS)
def reclassify_catalog(
    context: dg.OpExecutionContext,
    config: ClassificationConfig,
    catalog_db: CatalogDatabase,
    classifier: ClassifierResource,
) -> None:
    """Classify every catalog item not yet classified by the active classifier and taxonomy
    version (or changed since), at most `limit` per run."""
    context.add_output_metadata(classify_scope(context.log, config, catalog_db, classifier, None))


@dg.job(
    name=RECLASSIFY_JOB,
    description="Catalog-wide classification after a taxonomy or classifier change, bounded "
    "by `limit`; run it again until `deferred` is 0.",
)
def reclassify_catalog_job():
    reclassify_catalog()
