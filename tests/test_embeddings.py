"""Embedding the catalog and searching it, on SQLite (exact numpy scan) and on PostgreSQL
with pgvector (HNSW): only changed items are embedded, exact names come first, vectors of
two embedders never mix, failures are counted and retried, a server without pgvector says
which package to install."""

from __future__ import annotations

import json
import sqlite3

import dagster as dg
import pytest
from sqlalchemy import func, select, text, update

from catalog_pipeline.assets.embeddings import ITEM_EMBEDDINGS, embedding_coverage, item_embeddings
from catalog_pipeline.core.bucket import LocalBucket
from catalog_pipeline.core.embedding.base import EmbedderError
from catalog_pipeline.core.embedding.hashing import HashingEmbedder
from catalog_pipeline.core.embedding.openai import OpenAIEmbedder
from catalog_pipeline.core.retry import RetryPolicy
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db import embeddings as db
from catalog_pipeline.db.derivation_failures import failure_counts
from catalog_pipeline.db.tables import catalog_items
from catalog_pipeline.db.tables import item_embeddings as vectors_table
from catalog_pipeline.embeddings import (
    BULK_LOAD_ITEMS,
    embed_catalog,
    search_catalog,
    similar_items,
)
from catalog_pipeline.ingest import ingest_object
from catalog_pipeline.resources.catalog import CatalogDatabase
from catalog_pipeline.resources.embedder import EmbedderResource
from tests.embeddings_server import EmbeddingsServer
from tests.test_cli import cli


@pytest.fixture(params=["sqlite", "postgres+pgvector"])
def vector_engine(request):
    """Each test using this runs on SQLite and on PostgreSQL with pgvector."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_engine")
    return request.getfixturevalue("vector_postgres_engine")


def _catalog(engine, tmp_path, count=300):
    """Two sources listing the same products (the same names): a cross-source catalog."""
    bucket = LocalBucket(tmp_path / "bucket")
    for key, prefix in (
        ("shop_2026-11-01T06-00-00.csv", "SH"),
        ("mart_2026-11-01T06-00-00.csv", "MA"),
    ):
        bucket.put(key, sample_csv(count, seed=3, sku_prefix=prefix))
        ingest_object(bucket, engine, key, 1 << 20)
    with engine.connect() as connection:
        return connection.execute(select(catalog_items.c.sku, catalog_items.c.name)).all()


def _stored(engine, embedder: str) -> int:
    with engine.connect() as connection:
        return connection.execute(
            select(func.count()).where(vectors_table.c.embedder == embedder)
        ).scalar_one()


def test_embed_then_again_embeds_nothing_and_exact_names_come_first(vector_engine, tmp_path):
    items = _catalog(vector_engine, tmp_path)
    embedder = HashingEmbedder()

    first = embed_catalog(vector_engine, embedder)
    assert first.embedded == len(items) and first.failed == 0 and first.coverage == 1.0
    assert _stored(vector_engine, embedder.key) == len(items)
    again = embed_catalog(vector_engine, embedder)
    assert (again.embedded, again.skipped, again.failed) == (0, len(items), 0)

    names = {}
    for sku, name in items:
        names.setdefault(name, set()).add(sku)
    for _sku, name in items[::7]:
        hits = search_catalog(vector_engine, embedder, name, limit=5)
        assert hits[0].name == name, (name, hits[:2])
        assert {hit.sku for hit in hits[: len(names[name])]} == names[name]  # ties: all of them
        assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    only_mart = search_catalog(vector_engine, embedder, items[0][1], limit=5, source="mart")
    assert only_mart and {hit.source for hit in only_mart} == {"mart"}


def test_similar_lists_the_same_product_from_the_other_source(vector_engine, tmp_path):
    items = _catalog(vector_engine, tmp_path, count=120)
    embedder = HashingEmbedder()
    embed_catalog(vector_engine, embedder)
    shop = sorted(sku for sku, _ in items if sku.startswith("SH-"))[10]
    hits = similar_items(vector_engine, embedder, shop, limit=3)
    assert hits[0].sku == "MA-" + shop[3:] and hits[0].score > 0.99
    assert all(hit.source != "shop" for hit in hits)


def test_only_items_whose_embedded_text_changed_are_embedded_again(vector_engine, tmp_path):
    _catalog(vector_engine, tmp_path, count=100)
    embedder = HashingEmbedder()
    embed_catalog(vector_engine, embedder)
    with vector_engine.begin() as connection:
        items = catalog_items.c
        # A new price changes the content hash but not the embedded text: no new vector.
        connection.execute(
            update(catalog_items)
            .where(items.sku == "SH-00000001")
            .values(price=1.0, content_hash="price-changed")
        )
        connection.execute(
            update(catalog_items)
            .where(items.sku == "SH-00000002")
            .values(name="Renamed thing", content_hash="name-changed")
        )
    summary = embed_catalog(vector_engine, embedder)
    assert summary.embedded == 1 and summary.coverage == 1.0
    hits = search_catalog(vector_engine, embedder, "Renamed thing", limit=1)
    assert hits[0].sku == "SH-00000002"


def test_another_dimension_is_another_embedder_and_vectors_never_mix(vector_engine, tmp_path):
    items = _catalog(vector_engine, tmp_path, count=60)
    small, default = HashingEmbedder(64), HashingEmbedder()
    embed_catalog(vector_engine, default)
    assert embed_catalog(vector_engine, small).embedded == len(items)
    assert _stored(vector_engine, small.key) == _stored(vector_engine, default.key) == len(items)
    hits = search_catalog(vector_engine, small, items[5][1], limit=3)
    assert hits[0].name == items[5][1]


def test_limit_defers_the_rest_to_the_next_run(vector_engine, tmp_path):
    items = _catalog(vector_engine, tmp_path, count=50)
    embedder = HashingEmbedder()
    first = embed_catalog(vector_engine, embedder, limit=30)
    assert (first.embedded, first.deferred) == (30, len(items) - 30)
    second = embed_catalog(vector_engine, embedder)
    assert (second.embedded, second.deferred, second.coverage) == (len(items) - 30, 0, 1.0)


def test_items_the_embedder_refuses_are_counted_retried_then_left_out(sqlite_engine, tmp_path):
    items = _catalog(sqlite_engine, tmp_path, count=40)
    with sqlite_engine.connect() as connection:
        refused = connection.execute(
            select(catalog_items.c.id, catalog_items.c.name).order_by(catalog_items.c.id).limit(2)
        ).all()
    with EmbeddingsServer() as server:
        embedder = _client(server, batch_size=16)
        server.poison = {_document_text(sqlite_engine, i) for i, _ in refused}
        runs = [embed_catalog(sqlite_engine, embedder, max_failures=2) for _ in range(3)]
        retried = embed_catalog(sqlite_engine, embedder, max_failures=2, retry_failed=True)
    # Each refused text is listed by both sources: 4 items, counted twice, then left out.
    assert [run.failed for run in runs] == [4, 4, 0]
    assert runs[0].embedded == len(items) - 4 and runs[1].embedded == 0
    assert (runs[2].blocked, runs[2].embedded) == (4, 0)
    assert runs[2].coverage == round(1 - 4 / len(items), 4)
    assert failure_counts(sqlite_engine, embedder.key, 2) == (4, 4)
    assert retried.failed == 4  # sent again on request
    assert "refused" in runs[0].failures[0][1]


def _client(server: EmbeddingsServer, batch_size: int) -> OpenAIEmbedder:
    """An OpenAI-compatible client of the contract server, with a short retry budget."""
    short = RetryPolicy(budget_seconds=2, first_delay=0.01, max_delay=0.1)
    return OpenAIEmbedder(
        server.base_url, None, "test-embed", 16, batch_size=batch_size, retry_policy=short
    )


def _document_text(engine, item_id: int) -> str:
    """The text the embedder is sent for the item."""
    documents = db.pending_documents(engine, "none@1", True, None, 1, item_id - 1)
    return documents[0][0].text()


def test_a_first_batch_refused_whole_fails_the_run_not_the_items(sqlite_engine, tmp_path):
    _catalog(sqlite_engine, tmp_path, count=10)
    with EmbeddingsServer() as server:
        embedder = _client(server, batch_size=8)
        server.poison = {_document_text(sqlite_engine, i) for i in range(1, 21)}
        with pytest.raises(EmbedderError, match="configuration"):
            embed_catalog(sqlite_engine, embedder)
    assert failure_counts(sqlite_engine, embedder.key, 5) == (0, 0)


def test_postgres_uses_the_hnsw_index_of_the_embedder(vector_postgres_engine, tmp_path):
    items = _catalog(vector_postgres_engine, tmp_path, count=600)
    embedder = HashingEmbedder()
    assert len(items) >= BULK_LOAD_ITEMS  # a bulk load: the index is built after it
    assert embed_catalog(vector_postgres_engine, embedder).embedded == len(items)
    query = "[" + ",".join("0.1" for _ in range(256)) + "]"
    with vector_postgres_engine.begin() as connection:
        connection.execute(text("SET LOCAL enable_seqscan = off"))
        plan = connection.execute(
            text(
                "EXPLAIN SELECT item_id FROM item_embeddings e WHERE e.embedder = :embedder "
                "ORDER BY (e.embedding::vector(256)) <=> CAST(:q AS vector) LIMIT 5"
            ),
            {"embedder": embedder.key, "q": query},
        ).scalars()
        assert db.index_name(embedder.key) in "\n".join(plan)
    exact = db.search(
        vector_postgres_engine, embedder.key, 256, embedder.embed_query("tent"), 5, exact=True
    )
    approximate = db.search(
        vector_postgres_engine, embedder.key, 256, embedder.embed_query("tent"), 5
    )
    # (Both sources list each product alike: equal scores may come in either order.)
    assert [round(hit.score, 5) for hit in approximate] == [round(hit.score, 5) for hit in exact]


def test_postgres_without_pgvector_names_the_package_to_install(postgres_engine, tmp_path):
    _catalog(postgres_engine, tmp_path, count=5)
    with pytest.raises(db.VectorSearchUnavailableError, match=r"postgresql-\d+-pgvector"):
        embed_catalog(postgres_engine, HashingEmbedder())


def test_the_asset_materializes_with_metadata_and_its_coverage_check(sqlite_engine, tmp_path):
    items = _catalog(sqlite_engine, tmp_path, count=30)
    resources = {
        "catalog_db": CatalogDatabase(url=str(sqlite_engine.url)),
        "embedder": EmbedderResource(kind="hashing", dimensions=128),
    }
    result = dg.materialize([item_embeddings, embedding_coverage], resources=resources)
    assert result.success
    [materialization] = result.asset_materializations_for_node("item_embeddings")
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    assert metadata["embedded"] == len(items) and metadata["embedder"] == "hashing-v1@128"
    assert metadata["coverage_%"] == 100.0
    [check] = result.get_asset_check_evaluations()
    assert check.asset_key == ITEM_EMBEDDINGS and check.passed


@pytest.mark.slow
def test_cli_embed_search_and_similar_speak_json(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    bucket = tmp_path / "bucket"
    LocalBucket(bucket).put(
        "shop_2026-11-01T06-00-00.csv", sample_csv(200, seed=3, sku_prefix="SH")
    )
    LocalBucket(bucket).put(
        "mart_2026-11-01T06-00-00.csv", sample_csv(200, seed=3, sku_prefix="MA")
    )
    env = {"DAGSTER_HOME": ""}
    assert (
        cli("ingest", "--bucket", f"file://{bucket}", "--database-url", url, env=env).returncode
        == 0
    )
    first = cli("embed", "--json", "--database-url", url, env=env)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout.splitlines()[-1])
    assert summary["embedded"] > 0 and summary["failed"] == 0 and summary["coverage"] == 1.0
    second = json.loads(cli("embed", "--json", "--database-url", url, env=env).stdout)
    assert (second["embedded"], second["skipped"]) == (0, summary["embedded"])
    name = (
        sqlite3.connect(tmp_path / "catalog.sqlite")
        .execute("SELECT name FROM catalog_items WHERE sku = 'SH-00000007'")
        .fetchone()[0]
    )
    found = cli("search", name, "--json", "--limit", "3", "--database-url", url, env=env)
    results = json.loads(found.stdout)["results"]
    assert results[0]["name"] == name
    assert set(results[0]) == {"sku", "name", "source", "score"}
    similar = json.loads(
        cli("similar", "SH-00000000", "--json", "--database-url", url, env=env).stdout
    )
    assert similar["results"][0]["sku"] == "MA-00000000"
    missing = cli("similar", "NOPE", "--json", "--database-url", url, env=env)
    assert missing.returncode == 2 and "NOPE" in json.loads(missing.stdout)["error"]
    assert "Traceback" not in missing.stderr
