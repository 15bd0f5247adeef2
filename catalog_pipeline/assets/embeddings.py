"""`item_embeddings`: a vector per catalog item for search by meaning (or, with the default
`hashing` embedder, by words), kept current after every ingest, in its own run and pool
(`embedder`, limit 1) so a slow or failing embedder never holds up or fails an ingest.

The `embedding_coverage` check says which share of the catalog has a vector of the active
embedder for its current content.
"""

import dagster as dg

from catalog_pipeline.assets.classifications import failure_limit
from catalog_pipeline.assets.ingest import CATALOG_ITEMS
from catalog_pipeline.core.embedding.base import EmbedderError
from catalog_pipeline.core.retry import retrying
from catalog_pipeline.db.embeddings import VectorSearchUnavailableError, count_embeddings
from catalog_pipeline.embeddings import embed_catalog
from catalog_pipeline.resources.catalog import CatalogDatabase
from catalog_pipeline.resources.embedder import EmbedderResource
from catalog_pipeline.workers import DERIVED_TAGS

ITEM_EMBEDDINGS = dg.AssetKey("item_embeddings")
EMBEDDER_POOL = "embedder"
COVERAGE_TARGET = 0.99


class EmbeddingConfig(dg.Config):
    """`force`: embed every item again. `limit`: at most this many items in this run (the
    rest wait for the next). `max_failures`: leave out items that failed this often on
    unchanged content (default `CATALOG_MAX_DERIVATION_FAILURES`, else 5); `retry_failed`:
    send them again anyway."""

    force: bool = False
    limit: int | None = None
    max_failures: int | None = None
    retry_failed: bool = False


@dg.asset(
    key=ITEM_EMBEDDINGS,
    deps=[CATALOG_ITEMS],
    group_name="search",
    pool=EMBEDDER_POOL,
    op_tags=DERIVED_TAGS,
    automation_condition=dg.AutomationCondition.eager(),
)
def item_embeddings(
    context: dg.AssetExecutionContext,
    config: EmbeddingConfig,
    catalog_db: CatalogDatabase,
    embedder: EmbedderResource,
) -> dg.MaterializeResult:
    """A vector of every catalog item by the active embedder (`CATALOG_EMBEDDER`), for
    `catalog-pipeline search`: only items whose embedded text changed are sent again."""
    if config.limit is not None and config.limit < 0:
        raise dg.Failure(description=f"limit must be 0 or more, not {config.limit}")
    try:
        model = embedder.build()
        summary = embed_catalog(
            catalog_db.engine(),
            model,
            force=config.force,
            limit=config.limit,
            retry_failed=config.retry_failed,
            max_failures=failure_limit(config),
            progress=lambda done, planned: context.log.info(f"embedded {done:,}/{planned:,}"),
        )
    except (EmbedderError, VectorSearchUnavailableError) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error
    for sku, reason in summary.failures:
        context.log.warning(f"item {sku!r} not embedded: {reason}")
    metadata = {
        "embedder": summary.embedder,
        "dimension": summary.dimension,
        "embedded": summary.embedded,
        "skipped": summary.skipped,
        "embedding_failures": summary.failed,
        "items_skipped_after_failures": summary.blocked,
        "deferred": summary.deferred,
        "items": summary.items,
        "coverage_%": round(100 * summary.coverage, 2),
        "dagster/row_count": round(summary.coverage * summary.items),
        "seconds": summary.seconds,
        "items_per_second": summary.items_per_second,
    }
    if summary.failures:
        metadata["failures"] = dg.MetadataValue.json(dict(summary.failures))
    return dg.MaterializeResult(metadata=metadata)


@dg.asset_check(
    asset=ITEM_EMBEDDINGS,
    name="embedding_coverage",
    description=f"At least {COVERAGE_TARGET:.0%} of the catalog's items have a vector of the "
    "active embedder for their current content.",
)
def embedding_coverage(
    catalog_db: CatalogDatabase, embedder: EmbedderResource
) -> dg.AssetCheckResult:
    model = embedder.build()
    engine = catalog_db.engine()
    counts = retrying(
        lambda: count_embeddings(engine, model.key, failure_limit(EmbeddingConfig())),
        f"{model.key}: counting vectors",
    )
    return dg.AssetCheckResult(
        passed=counts.coverage >= COVERAGE_TARGET,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "embedder": model.key,
            "coverage_%": round(100 * counts.coverage, 2),
            "items": counts.items,
            "with_current_vector": counts.current,
            "with_stale_vector": counts.stale,
            "left_out_after_failures": counts.blocked,
        },
    )
