"""Core-only ingest of a large generated catalog CSV: rows/s and peak RSS (no Dagster).

    python -m benchmarks.core_ingest --rows 1000000 [--database-url URL] [--chunk-bytes N]

Peak RSS is the process high-water mark (ru_maxrss), reported next to the file size and
chunk size so memory can be seen to follow the chunk size, not the file size.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from catalog_pipeline.core.bucket import LocalBucket
from catalog_pipeline.core.chunking import DEFAULT_CHUNK_BYTES
from catalog_pipeline.core.samples import write_sample_csv
from catalog_pipeline.db.engine import make_engine, upgrade
from catalog_pipeline.ingest import ingest_object


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--workdir", default=None)
    arguments = parser.parse_args()

    workdir = Path(arguments.workdir or tempfile.mkdtemp(prefix="catalog-bench-"))
    bucket = LocalBucket(workdir / "bucket")
    key = "bench_2026-01-01T00-00-00.csv"
    path = workdir / "bucket" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        write_sample_csv(path, arguments.rows)
    rss_before = peak_rss_mb()
    engine = make_engine(arguments.database_url or f"sqlite:///{workdir / 'bench.sqlite'}")
    upgrade(engine)
    started = time.perf_counter()
    summary, reasons = ingest_object(bucket, engine, key, arguments.chunk_bytes)
    seconds = time.perf_counter() - started
    size = path.stat().st_size
    print(
        json.dumps(
            {
                "rows": summary.rows_total,
                "valid": summary.rows_valid,
                "invalid": summary.rows_invalid,
                "verified_row_count": summary.verified_row_count,
                "file_mb": round(size / 1e6, 1),
                "chunk_mb": round(arguments.chunk_bytes / 1e6, 1),
                "seconds": round(seconds, 2),
                "rows_per_s": round(summary.rows_total / seconds),
                "mb_per_s": round(size / 1e6 / seconds, 1),
                "peak_rss_mb_before_ingest": round(rss_before, 1),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "database": engine.dialect.name,
                "top_reasons": dict(reasons.most_common(5)),
            }
        )
    )


if __name__ == "__main__":
    main()
