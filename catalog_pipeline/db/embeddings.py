"""`item_embeddings`: which items need a vector, storing vectors, and nearest-neighbour search.

PostgreSQL keeps each vector as `real[]` and searches with pgvector: one HNSW index (cosine
distance) per embedder, over `embedding::vector(n)` and limited to that embedder's rows, so
vectors of models with different dimensions share the table and never mix. SQLite (the
zero-setup default) searches exactly, with numpy, a block of rows at a time. Both answer
through `search` with the same results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Connection, Engine, and_, bindparam, case, func, or_, select, text

from catalog_pipeline.core.embedding.base import checked_key
from catalog_pipeline.core.embedding.document import ItemDocument
from catalog_pipeline.core.errors import PermanentError
from catalog_pipeline.db.derivation_failures import blocked
from catalog_pipeline.db.engine import dialect_insert
from catalog_pipeline.db.tables import catalog_items, item_embeddings, utcnow

_items = catalog_items.c
_vectors = item_embeddings.c
_SCAN_ROWS = 50_000  # rows a block of the exact scan (SQLite): 50 MB at 256 dimensions
# HNSW: pgvector's defaults (m 16, ef_construction 64, ef_search 40) missed an item's exact
# name for 8 of 300 demo names, and m 24 / 128 / 100 still gave recall@10 0.92-0.96 at 100k
# vectors, with some queries finding nothing right: lexical hashing vectors are hard for a
# graph index (many near-equal names, a high intrinsic dimension). These gave 0.9995, for
# about twice the build time (benchmarks/embeddings.py, docs/search.md).
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 200
_EF_SEARCH_MIN = 200  # candidates a search keeps; twice the limit for larger limits


class VectorSearchUnavailableError(PermanentError):
    """PostgreSQL has no pgvector extension: embeddings cannot be indexed or searched."""


@dataclass(frozen=True, slots=True)
class SearchHit:
    item_id: int
    sku: str
    name: str
    source: str
    score: float  # cosine similarity, 1 = the same direction


@dataclass(frozen=True, slots=True)
class EmbeddingCounts:
    items: int  # current catalog items
    current: int  # ... with a vector of this embedder for their current content
    stale: int  # ... with a vector for older content
    blocked: int  # ... left out after repeated failures on their current content

    @property
    def coverage(self) -> float:
        return self.current / self.items if self.items else 1.0


def _pending(embedder: str, force: bool, leave_out_after: int | None):
    """Items with no vector of `embedder`, or one for other content (all with `force`)."""
    join = catalog_items.outerjoin(
        item_embeddings, and_(_vectors.item_id == _items.id, _vectors.embedder == embedder)
    )
    condition = (
        None
        if force
        else or_(_vectors.item_id.is_(None), _vectors.content_hash != _items.content_hash)
    )
    if leave_out_after is not None:
        left_out = ~blocked(embedder, leave_out_after)
        condition = left_out if condition is None else and_(condition, left_out)
    return join, condition


def count_embeddings(
    connectable: Engine | Connection, embedder: str, max_failures: int
) -> EmbeddingCounts:
    join = catalog_items.outerjoin(
        item_embeddings, and_(_vectors.item_id == _items.id, _vectors.embedder == embedder)
    )
    is_current = _vectors.content_hash == _items.content_hash
    is_stale = and_(_vectors.item_id.is_not(None), _vectors.content_hash != _items.content_hash)

    def total(condition):
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    query = select(
        func.count(), total(is_current), total(is_stale), total(blocked(embedder, max_failures))
    ).select_from(join)
    with _connect(connectable) as connection:
        items, current, stale, blocked_count = connection.execute(query).one()
    return EmbeddingCounts(int(items), int(current), int(stale), int(blocked_count))


def count_pending(engine: Engine, embedder: str, force: bool, leave_out_after: int | None) -> int:
    join, condition = _pending(embedder, force, leave_out_after)
    query = select(func.count()).select_from(join)
    if condition is not None:
        query = query.where(condition)
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def pending_documents(
    engine: Engine,
    embedder: str,
    force: bool,
    leave_out_after: int | None,
    batch: int,
    after_id: int = 0,
) -> list[tuple[ItemDocument, str | None]]:
    """The next `batch` items to embed after item id `after_id` (keyset order), each with
    the input hash of its stored vector (None without one)."""
    join, condition = _pending(embedder, force, leave_out_after)
    query = (
        select(
            _items.id,
            _items.sku,
            _items.name,
            _items.brand,
            _items.category,
            _items.description,
            _items.content_hash,
            _vectors.input_hash,
        )
        .select_from(join)
        .where(_items.id > after_id)
        .order_by(_items.id)
        .limit(batch)
    )
    if condition is not None:
        query = query.where(condition)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    return [(ItemDocument(*row[:7]), row[7]) for row in rows]


def store_embeddings(
    engine: Engine,
    embedder: str,
    dimension: int,
    rows: Sequence[tuple[int, str, str, np.ndarray | None]],
) -> int:
    """Upsert `(item_id, content_hash, input_hash, vector)` rows in one transaction; a row
    whose vector is None only moves its stored vector to the new content hash (its text did
    not change). Returns the number of rows written."""
    if not rows:
        return 0
    now = utcnow()
    full = [
        {
            "item_id": item_id,
            "embedder": embedder,
            "dimension": dimension,
            "content_hash": content_hash,
            "input_hash": input_hash,
            "embedding": vector,
            "embedded_at": now,
        }
        for item_id, content_hash, input_hash, vector in rows
        if vector is not None
    ]
    touched = [
        {"moved_item": item_id, "moved_hash": content_hash}
        for item_id, content_hash, _, vector in rows
        if vector is None
    ]
    with engine.begin() as connection:
        postgres = connection.dialect.name == "postgresql"
        if full:
            for row in full:
                row["embedding"] = _bind(row["embedding"], postgres)
            statement = dialect_insert(connection)(item_embeddings)
            excluded = statement.excluded
            connection.execute(
                statement.on_conflict_do_update(
                    index_elements=[_vectors.item_id, _vectors.embedder],
                    set_={
                        "dimension": excluded.dimension,
                        "content_hash": excluded.content_hash,
                        "input_hash": excluded.input_hash,
                        "embedding": excluded.embedding,
                        "embedded_at": excluded.embedded_at,
                    },
                ),
                full,
            )
        if touched:
            connection.execute(
                item_embeddings.update()
                .where(_vectors.item_id == bindparam("moved_item"), _vectors.embedder == embedder)
                .values(content_hash=bindparam("moved_hash")),
                touched,
            )
    return len(full) + len(touched)


def _bind(vector: np.ndarray, postgres: bool):
    vector = np.asarray(vector, dtype="<f4")
    return vector.tolist() if postgres else vector.tobytes()


def _load(value, dimension: int) -> np.ndarray:
    if isinstance(value, bytes | memoryview):
        return np.frombuffer(value, dtype="<f4", count=dimension)
    return np.asarray(value, dtype=np.float32)


# PostgreSQL: pgvector


def index_name(embedder: str) -> str:
    digest = hashlib.sha256(embedder.encode()).hexdigest()[:12]
    return f"ix_item_embeddings_hnsw_{digest}"


def _vector_index_sql(embedder: str, dimension: int) -> str:
    key = checked_key(embedder)  # a plain name: safe as a literal in DDL
    return (
        f"CREATE INDEX IF NOT EXISTS {index_name(key)} ON item_embeddings USING hnsw "
        f"((embedding::vector({int(dimension)})) vector_cosine_ops) "
        f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) WHERE embedder = '{key}'"
    )


def _has_vector_extension(connection: Connection) -> bool:
    query = text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
    return connection.execute(query).first() is not None


def _vector_available(connection: Connection) -> bool:
    query = text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    return connection.execute(query).first() is not None


def try_vector_index(connection: Connection, embedder: str, dimension: int) -> bool:
    """Create pgvector (when the server has it) and `embedder`'s index; False, changing
    nothing, when the server has no pgvector."""
    if not _has_vector_extension(connection):
        if not _vector_available(connection):
            return False
        connection.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
    connection.execute(text(_vector_index_sql(embedder, dimension)))
    return True


def drop_vector_index(engine: Engine, embedder: str) -> None:
    """Drop `embedder`'s HNSW index (PostgreSQL) before a bulk load: one build afterwards
    costs far less than an index insert per vector. Searches meanwhile scan exactly."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(text(f"DROP INDEX IF EXISTS {index_name(checked_key(embedder))}"))


def count_stored(engine: Engine, embedder: str) -> int:
    query = select(func.count()).where(_vectors.embedder == embedder)
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def ensure_vector_index(engine: Engine, embedder: str, dimension: int) -> None:
    """On PostgreSQL, make sure pgvector and `embedder`'s HNSW index exist; raise
    `VectorSearchUnavailableError` naming the package to install when the server has no
    pgvector. Nothing to do on SQLite."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as connection:
        if try_vector_index(connection, embedder, dimension):
            return
        version = connection.execute(text("SHOW server_version_num")).scalar_one()
    major = int(version) // 10000
    raise VectorSearchUnavailableError(
        f"this PostgreSQL server ({major}) has no pgvector extension, which embeddings and "
        f"search need: install the package postgresql-{major}-pgvector (Debian/Ubuntu; "
        "pgvector on other platforms) on the database server; the pipeline then creates the "
        "extension itself (or run `CREATE EXTENSION vector` as a superuser)"
    )


def search(
    engine: Engine,
    embedder: str,
    dimension: int,
    query: np.ndarray,
    limit: int = 10,
    source: str | None = None,
    exclude_source: str | None = None,
    exact: bool = False,
) -> list[SearchHit]:
    """The `limit` items of `embedder`'s vectors nearest to `query` (a unit vector), best
    first, optionally of one source only or of any source but one. PostgreSQL uses the HNSW
    index (approximate) unless `exact`; SQLite always scans exactly."""
    if engine.dialect.name == "postgresql":
        return _search_postgres(
            engine, embedder, dimension, query, limit, source, exclude_source, exact
        )
    return _search_exact(engine, embedder, dimension, query, limit, source, exclude_source)


def _search_postgres(engine, embedder, dimension, query, limit, source, exclude_source, exact):
    cast = f"(e.embedding::vector({int(dimension)}))"
    filters = ["e.embedder = :embedder"]
    if source is not None:
        filters.append("i.source = :source")
    if exclude_source is not None:
        filters.append("i.source <> :exclude")
    sql = text(
        f"SELECT i.id, i.sku, i.name, i.source, 1 - ({cast} <=> CAST(:query AS vector)) "
        f"FROM item_embeddings e JOIN catalog_items i ON i.id = e.item_id "
        f"WHERE {' AND '.join(filters)} "
        f"ORDER BY {cast} <=> CAST(:query AS vector) LIMIT :limit"
    )
    parameters = {
        "embedder": embedder,
        "source": source,
        "exclude": exclude_source,
        "query": "[" + ",".join(f"{x:.7g}" for x in np.asarray(query, np.float32)) + "]",
        "limit": limit,
    }
    with engine.connect() as connection:
        available = _has_vector_extension(connection)
    if not available:
        ensure_vector_index(engine, embedder, dimension)  # creates it, or names the package
    with engine.begin() as connection:
        if exact:
            connection.execute(text("SET LOCAL enable_indexscan = off"))
        else:
            ef_search = max(_EF_SEARCH_MIN, 2 * limit)
            connection.execute(text(f"SET LOCAL hnsw.ef_search = {int(ef_search)}"))
            if source is not None or exclude_source is not None:
                # Filtered searches keep scanning the index until `limit` rows pass.
                connection.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
        rows = connection.execute(sql, parameters).all()
    hits = [SearchHit(int(i), sku, name, src, float(score)) for i, sku, name, src, score in rows]
    # relaxed_order may return near-ties out of order: the caller gets them best first.
    return sorted(hits, key=lambda hit: -hit.score)


def _search_exact(engine, embedder, dimension, query, limit, source, exclude_source):
    query = np.asarray(query, dtype=np.float32)
    best_ids = np.empty(0, dtype=np.int64)
    best_scores = np.empty(0, dtype=np.float32)
    for ids, vectors in _vector_blocks(engine, embedder, dimension, source, exclude_source):
        scores = vectors @ query
        ids = np.concatenate([best_ids, ids])
        scores = np.concatenate([best_scores, scores])
        keep = min(limit, len(scores))
        top = np.argpartition(-scores, keep - 1)[:keep] if keep else np.empty(0, np.int64)
        best_ids, best_scores = ids[top], scores[top]
    order = np.lexsort((best_ids, -best_scores))
    best_ids, best_scores = best_ids[order], best_scores[order]
    if not len(best_ids):
        return []
    with engine.connect() as connection:
        rows = connection.execute(
            select(_items.id, _items.sku, _items.name, _items.source).where(
                _items.id.in_(best_ids.tolist())
            )
        ).all()
    found = {row[0]: row for row in rows}
    return [
        SearchHit(int(i), found[i][1], found[i][2], found[i][3], float(score))
        for i, score in zip(best_ids.tolist(), best_scores.tolist(), strict=True)
        if i in found
    ]


def _vector_blocks(
    engine: Engine, embedder: str, dimension: int, source: str | None, exclude: str | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    query = select(_vectors.item_id, _vectors.embedding).where(_vectors.embedder == embedder)
    if source is not None or exclude is not None:
        query = query.join(catalog_items, _items.id == _vectors.item_id)
        if source is not None:
            query = query.where(_items.source == source)
        if exclude is not None:
            query = query.where(_items.source != exclude)
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=_SCAN_ROWS).execute(query)
        for rows in result.partitions():
            ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
            vectors = np.stack([_load(row[1], dimension) for row in rows])
            yield ids, vectors


def item_vector(engine: Engine, embedder: str, sku: str) -> tuple[int, str, np.ndarray] | None:
    """An item's id, source and stored vector of `embedder` (None without one)."""
    query = (
        select(_items.id, _items.source, _vectors.embedding, _vectors.dimension)
        .join(item_embeddings, _vectors.item_id == _items.id)
        .where(_items.sku == sku, _vectors.embedder == embedder)
    )
    with engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        return None
    return int(row[0]), row[1], _load(row[2], int(row[3]))


class _connect:
    """An engine's connection, or the caller's connection as it is."""

    def __init__(self, connectable: Engine | Connection) -> None:
        self.connectable = connectable
        self.opened: Connection | None = None

    def __enter__(self) -> Connection:
        if isinstance(self.connectable, Connection):
            return self.connectable
        self.opened = self.connectable.connect()
        return self.opened

    def __exit__(self, *exc) -> None:
        if self.opened is not None:
            self.opened.close()
