"""Embed the catalog and search it: the code the `item_embeddings` asset and the
`catalog-pipeline embed | search | similar` commands share.

Only items whose embedding input changed are sent to the embedder: an item whose content
hash moved but whose embedded text did not (a new price, say) only gets its stored
vector's content hash updated. Items the embedder fails on alone are counted in the
failure ledger (`derivation_failures`) and retried on the next run until they failed
`max_failures` times on the same content; an outage (`EmbedderError`) fails the run and
blames no item. Every database read and write is one short statement or transaction,
retried on transient errors (`core.retry`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from sqlalchemy import Engine

from catalog_pipeline.core.embedding.base import EmbeddedBatch, Embedder, EmbedderError
from catalog_pipeline.core.embedding.document import input_hash
from catalog_pipeline.core.retry import retrying
from catalog_pipeline.db import derivation_failures as ledger
from catalog_pipeline.db import embeddings as db
from catalog_pipeline.db.tables import utcnow

FAILURES_KEPT = 20
BULK_LOAD_ITEMS = 1000  # from this many new vectors, the HNSW index is built after them


@dataclass(frozen=True, slots=True)
class EmbedSummary:
    embedder: str
    dimension: int
    embedded: int  # vectors computed and stored
    skipped: int  # items needing no call: current already, or their text unchanged
    failed: int  # items the embedder failed on alone (in the ledger)
    blocked: int  # items left out after repeated failures on their current content
    deferred: int  # pending items left for a later run by `limit`
    items: int
    coverage: float  # share of items with a vector of this embedder for their content
    seconds: float
    failures: tuple[tuple[str, str], ...] = ()  # (sku, reason), the first few

    @property
    def items_per_second(self) -> float:
        return round(self.embedded / self.seconds, 1) if self.seconds else 0.0


def embed_catalog(
    engine: Engine,
    embedder: Embedder,
    *,
    force: bool = False,
    limit: int | None = None,
    retry_failed: bool = False,
    max_failures: int = ledger.DEFAULT_MAX_FAILURES,
    progress: Callable[[int, int], None] | None = None,
) -> EmbedSummary:
    """Embed the catalog's new and changed items with `embedder` (all items with `force`),
    at most `limit` of them; `progress(done, planned)` after each batch."""
    started = time.monotonic()
    key, dimension = embedder.key, embedder.dimension
    retrying(lambda: db.ensure_vector_index(engine, key, dimension), f"{key}: vector index")
    leave_out = None if retry_failed else max_failures
    before = retrying(
        lambda: db.count_embeddings(engine, key, max_failures), f"{key}: counting vectors"
    )
    blocked = before.blocked if leave_out is not None else 0
    pending = retrying(
        lambda: db.count_pending(engine, key, force, leave_out), f"{key}: counting items"
    )
    planned = pending if limit is None else min(limit, pending)
    bulk = engine.dialect.name == "postgresql" and planned >= BULK_LOAD_ITEMS
    if bulk and planned > retrying(lambda: db.count_stored(engine, key), f"{key}: counting"):
        # More new vectors than stored ones: build the index once, after them.
        retrying(lambda: db.drop_vector_index(engine, key), f"{key}: dropping the index")
    else:
        bulk = False
    tally = _Tally()
    try:
        _embed_batches(engine, embedder, force, leave_out, planned, progress, tally)
    finally:
        if bulk:
            _rebuild_index(engine, key, dimension, failing=sys.exc_info()[0] is not None)
    embedded, failed, done, failures = tally.embedded, tally.failed, tally.done, tally.failures
    counts = retrying(
        lambda: db.count_embeddings(engine, key, max_failures), f"{key}: counting vectors"
    )
    return EmbedSummary(
        embedder=key,
        dimension=dimension,
        embedded=embedded,
        skipped=max(0, counts.items - embedded - failed - blocked - (pending - done)),
        failed=failed,
        blocked=blocked,
        deferred=pending - done,
        items=counts.items,
        coverage=round(counts.coverage, 4),
        seconds=round(time.monotonic() - started, 3),
        failures=tuple(failures[:FAILURES_KEPT]),
    )


@dataclass(slots=True)
class _Tally:
    embedded: int = 0
    failed: int = 0
    done: int = 0  # pending items read
    failures: list[tuple[str, str]] = field(default_factory=list)


def _embed_batches(
    engine: Engine,
    embedder: Embedder,
    force: bool,
    leave_out: int | None,
    planned: int,
    progress: Callable[[int, int], None] | None,
    tally: _Tally,
) -> None:
    """Embed up to `planned` pending items, a batch at a time, counting into `tally`."""
    key, dimension = embedder.key, embedder.dimension
    after = 0
    while tally.done < planned:
        size = min(embedder.batch_size, planned - tally.done)
        batch = retrying(
            lambda after=after, size=size: db.pending_documents(
                engine, key, force, leave_out, size, after
            ),
            f"{key}: reading items to embed",
        )
        if not batch:
            break
        after = batch[-1][0].item_id
        tally.done += len(batch)
        hashes = [input_hash(key, document.text()) for document, _ in batch]
        rows: list[tuple[int, str, str, object]] = []
        to_embed = []
        for (document, stored), new in zip(batch, hashes, strict=True):
            if stored == new and not force:
                rows.append((document.item_id, document.content_hash, new, None))
            else:
                to_embed.append((document, new))
        result = embedder.embed_documents([document for document, _ in to_embed])
        if not tally.embedded and 1 < len(to_embed) == len(result.failures):
            _check_not_all_refused(engine, key, [d.item_id for d, _ in to_embed], result)
        for row, position in enumerate(result.embedded):
            document, new = to_embed[position]
            rows.append((document.item_id, document.content_hash, new, result.vectors[row]))
        retrying(
            lambda rows=rows: db.store_embeddings(engine, key, dimension, rows),
            f"{key}: storing {len(rows)} vectors",
        )
        succeeded = [to_embed[position][0].item_id for position in result.embedded]
        if succeeded:
            retrying(
                lambda ids=succeeded: ledger.clear_failures(engine, key, ids),
                f"{key}: clearing failures",
            )
        if result.failures:
            failed_at = utcnow()
            entries = [
                (to_embed[p][0].item_id, to_embed[p][0].content_hash, reason)
                for p, reason in result.failures.items()
            ]
            retrying(
                lambda entries=entries, at=failed_at: ledger.record_failures(
                    engine, key, entries, at
                ),
                f"{key}: recording failures",
            )
            tally.failures += [(to_embed[p][0].sku, r) for p, r in result.failures.items()]
        tally.embedded += len(result.embedded)
        tally.failed += len(result.failures)
        if progress is not None:
            progress(tally.done, planned)


def _rebuild_index(engine: Engine, key: str, dimension: int, failing: bool) -> None:
    """The index dropped for a bulk load, built again; when the load failed, a failure
    here (the database may be what failed) must not hide the load's error: the next run
    builds it."""
    try:
        retrying(lambda: db.ensure_vector_index(engine, key, dimension), f"{key}: index")
    except Exception:
        if not failing:
            raise


def _check_not_all_refused(
    engine: Engine, key: str, item_ids: list[int], result: EmbeddedBatch
) -> None:
    """The run's first batch was refused item by item. Items that never failed before all
    refused at once point at the configuration (a model that takes no `dimensions`, an
    input limit far too low), not at the items: fail the run instead of blaming, and in
    time leaving out, the whole catalog. Items already in the ledger fail as usual."""
    known = retrying(
        lambda: ledger.failed_item_ids(engine, key, item_ids), f"{key}: reading failures"
    )
    if known:
        return
    example = next(iter(result.failures.values()))
    raise EmbedderError(
        f"{key}: the endpoint refused every item of the first batch ({len(item_ids)}), "
        "which points at the configuration (model, dimensions, URL), not the items; the "
        f"first refusal: {example}"
    )


def search_catalog(
    engine: Engine, embedder: Embedder, text: str, limit: int = 10, source: str | None = None
) -> list[db.SearchHit]:
    """The items nearest to `text` by `embedder`'s vectors, best first."""
    query = embedder.embed_query(text)
    return retrying(
        lambda: db.search(engine, embedder.key, embedder.dimension, query, limit, source),
        f"{embedder.key}: search",
    )


class UnknownItemError(ValueError):
    """The SKU is not in the catalog, or has no vector of the embedder yet."""


def similar_items(
    engine: Engine, embedder: Embedder, sku: str, limit: int = 10
) -> list[db.SearchHit]:
    """The items of *other* sources nearest to item `sku`: likely the same product listed
    elsewhere (cross-source duplicates)."""
    found = retrying(lambda: db.item_vector(engine, embedder.key, sku), f"{sku}: vector")
    if found is None:
        raise UnknownItemError(
            f"item {sku!r} has no {embedder.key} vector: check the SKU, or run "
            "`catalog-pipeline embed` first"
        )
    _, source, vector = found
    return retrying(
        lambda: db.search(
            engine, embedder.key, embedder.dimension, vector, limit, exclude_source=source
        ),
        f"{sku}: similar items",
    )


# The commands


def run_embed_command(
    engine: Engine,
    embedder: Embedder,
    *,
    json_mode: bool,
    force: bool,
    limit: int | None,
    retry_failed: bool,
) -> int:
    from catalog_pipeline.progress import Progress, progress_wanted

    # The planned count is known after the first batch: the bar starts without a total.
    with Progress(f"embed ({embedder.key})", None, enabled=progress_wanted(json_mode)) as bar:
        summary = embed_catalog(
            engine,
            embedder,
            force=force,
            limit=limit,
            retry_failed=retry_failed,
            max_failures=ledger.max_failures_setting(),
            progress=lambda done, planned: bar.update(done, total=planned),
        )
    if json_mode:
        fields = asdict(summary)
        fields["failures"] = [list(failure) for failure in summary.failures]
        fields["items_per_second"] = summary.items_per_second
        print(json.dumps(fields))
    else:
        print(
            f"{summary.embedder}: {summary.embedded:,} embedded, {summary.skipped:,} skipped "
            f"(unchanged), {summary.failed:,} failed, {summary.blocked:,} left out after "
            f"repeated failures, {summary.deferred:,} deferred; coverage "
            f"{100 * summary.coverage:.1f} % of {summary.items:,} items "
            f"({summary.seconds:.1f}s, {summary.items_per_second:,} items/s)"
        )
        for sku, reason in summary.failures:
            print(f"  failed: {sku}: {reason}")
    return 0


def print_hits(hits: list[db.SearchHit], json_mode: bool) -> None:
    if json_mode:
        rows = [
            {"sku": hit.sku, "name": hit.name, "source": hit.source, "score": round(hit.score, 4)}
            for hit in hits
        ]
        print(json.dumps({"results": rows}))
        return
    if not hits:
        print("no results (is the catalog embedded? run `catalog-pipeline embed`)")
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>3}. {hit.score:.3f}  {hit.sku:<24} {hit.source:<16} {hit.name}")
