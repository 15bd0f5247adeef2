"""`item_classifications`: the category of every item a `source_csvs` partition touched, by
the active classifier; and `reclassify_catalog_job` for the whole catalog (after a taxonomy
change), bounded by `limit`.

Materialized automatically after `catalog_items` (its own run, so a classifier outage never
fails an ingest), in pool `classifier` (limit 1: two runs never call the model at once).
"""

import time
from collections.abc import Sequence

import dagster as dg

from catalog_pipeline.assets.ingest import CATALOG_ITEMS
from catalog_pipeline.assets.partitions import object_key_for, source_csvs
from catalog_pipeline.core.classification import (
    Classified,
    ClassifierError,
    ItemText,
    classifier_key,
    classify_in_batches,
)
from catalog_pipeline.db.classifications import (
    category_distribution,
    count_items,
    iter_items,
    store_classifications,
)
from catalog_pipeline.resources.catalog import CatalogDatabase
from catalog_pipeline.resources.classifier import ClassifierResource

ITEM_CLASSIFICATIONS = dg.AssetKey("item_classifications")
CLASSIFIER_POOL = "classifier"
RECLASSIFY_JOB = "reclassify_catalog_job"
FAILURES_SHOWN = 20


class ClassificationConfig(dg.Config):
    """`force`: classify even items unchanged since their stored result. `limit`: at most
    this many items in this run (the rest wait for the next run)."""

    force: bool = False
    limit: int | None = None


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
    try:
        classifier = resource.build()
        key = classifier_key(classifier)
    except ClassifierError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error
    engine = catalog_db.engine()
    counts = count_items(engine, key, object_key, config.force)
    planned = counts.pending if config.limit is None else min(config.limit, counts.pending)
    log.info(
        f"{scope}: {counts.total:,} items, {counts.unchanged:,} unchanged, "
        f"classifying {planned:,} with {key}"
    )
    stored = 0

    def store(batch: Sequence[ItemText], results: list[Classified]) -> None:
        nonlocal stored
        stored += store_classifications(engine, key, batch, results)

    items = iter_items(engine, key, object_key, config.force, config.limit)
    try:
        summary = classify_in_batches(classifier, items, store)
    except ClassifierError as error:
        raise dg.Failure(
            description=f"{scope}: classifier {key} failed after storing {stored:,} of "
            f"{planned:,} items (stored results are kept; the next run continues with the "
            f"rest): {error}",
            metadata={"classifier": key, "classified": stored, "object_key": scope},
        ) from error
    for sku, reason in summary.failures[:FAILURES_SHOWN]:
        log.warning(f"{scope}: item {sku!r} not classified: {reason}")
    distribution = category_distribution(engine, key, object_key)
    metadata = {
        "classifier": key,
        "classified": summary.classified,
        "skipped": counts.unchanged,
        "failed": summary.failed,
        "deferred": counts.pending - summary.attempted,
        "items": counts.total,
        "dagster/row_count": sum(count for _, count in distribution),
        "distribution": distribution_table(distribution),
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


@dg.op(pool=CLASSIFIER_POOL)
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
