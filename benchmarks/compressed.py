"""The plan step of a compressed object against its uncompressed twin: seconds, throughput
and peak RSS (no Dagster).

    python -m benchmarks.compressed [--size-mb 1024] [--compressions gzip,zstd] [--workdir DIR]

Generates a scraper CSV of `--size-mb` MB (decompressed), compresses it (gzip level 6, as
`gzip` does; zstd level 3, as `zstd` does), and runs `plan_object` (HEAD, streaming read,
decompression into a temporary file, chunk planning, upload of the staged copy, the plan
stored in SQLite) for each object on a local-folder bucket, every one in a child process
of its own so its peak RSS (ru_maxrss) is its own. The plain twin's plan step is the same
call without decompression or staging. Prints one JSON object.

Throughput is decompressed MB per second, so the figures compare directly; memory should
follow the block size (8 MiB reads, 256 KiB decompressed blocks), not the file size. A
compressed object's plan step also writes its decompressed size to disk twice (the
temporary file, then the staged copy), so on a slow disk that is what it waits for.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from catalog_pipeline.core.chunking import DEFAULT_CHUNK_BYTES

REPO = Path(__file__).resolve().parents[1]
KEY = "bench_2026-01-01T00-00-00.csv"
SUFFIXES = {"plain": "", "gzip": ".gz", "zstd": ".zst"}


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def generate(folder: Path, size_mb: int, compressions: list[str]) -> dict[str, Path]:
    """The plain CSV of about `size_mb` MB and its compressed twins (kept between runs)."""
    from catalog_pipeline.core.samples import sample_csv, write_sample_csv

    folder.mkdir(parents=True, exist_ok=True)
    plain = folder / KEY
    target = size_mb * 1_000_000
    if not plain.exists() or abs(plain.stat().st_size - target) > target * 0.05:
        per_row = len(sample_csv(2000, seed=7)) / 2001
        write_sample_csv(plain, max(1, round(target / per_row)))
    paths = {"plain": plain}
    for compression in compressions:
        path = folder / (KEY + SUFFIXES[compression])
        if not path.exists() or path.stat().st_mtime < plain.stat().st_mtime:
            _compress(plain, path, compression)
        paths[compression] = path
    return paths


def _compress(source: Path, target: Path, compression: str) -> None:
    partial = target.with_name(f".{target.name}.tmp")  # hidden until whole
    with source.open("rb") as reader:
        if compression == "gzip":
            with gzip.open(partial, "wb", compresslevel=6) as writer:
                shutil.copyfileobj(reader, writer, 8 << 20)
        else:
            import zstandard

            with partial.open("wb") as raw:
                zstandard.ZstdCompressor(level=3).copy_stream(reader, raw)
    partial.replace(target)


def measure(bucket_folder: Path, key: str, chunk_bytes: int) -> dict:
    """One plan step, in this (child) process."""
    from catalog_pipeline.core.bucket import LocalBucket
    from catalog_pipeline.db.engine import make_engine, upgrade
    from catalog_pipeline.ingest import discard_staged_copy, plan_object

    database = bucket_folder.parent / f"plan-{key}.sqlite"
    database.unlink(missing_ok=True)
    engine = make_engine(f"sqlite:///{database}")
    upgrade(engine)
    bucket = LocalBucket(bucket_folder)
    rss_before = _peak_rss_mb()
    started = time.perf_counter()
    planned = plan_object(bucket, engine, key, chunk_bytes)
    seconds = time.perf_counter() - started
    data = planned.data or planned.info
    if planned.data is not None:  # what `finalize` does once the file is done
        discard_staged_copy(bucket, key, planned.data.key)
    return {
        "object_mb": round(planned.info.size / 1e6, 1),
        "decompressed_mb": round(data.size / 1e6, 1),
        "chunks": len(planned.chunks),
        "records": planned.record_count,
        "seconds": round(seconds, 2),
        "mb_per_s": round(data.size / 1e6 / seconds, 1),
        "peak_rss_mb_before_plan": rss_before,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _child(bucket_folder: Path, key: str, chunk_bytes: int) -> dict:
    _read_through(bucket_folder / key)
    # The plan step of a compressed object writes its decompressed size twice (the
    # temporary file, the staged copy): start each with no earlier write still being
    # flushed, or the disk's writeback decides the figure (seen: 0.6 s or 2.6 s).
    os.sync()
    time.sleep(1)
    command = [
        sys.executable,
        "-m",
        "benchmarks.compressed",
        "--measure",
        key,
        "--workdir",
        str(bucket_folder.parent),
        "--chunk-bytes",
        str(chunk_bytes),
    ]
    output = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if output.returncode != 0:
        raise RuntimeError(f"planning {key} failed:\n{output.stderr[-4000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def _read_through(path: Path) -> None:
    """Every object starts in the page cache (see benchmarks/ingest.py)."""
    with path.open("rb", buffering=0) as file:
        while file.read(8 << 20):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024, help="decompressed size")
    parser.add_argument("--compressions", default="gzip", help="gzip, zstd or gzip,zstd")
    parser.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES)
    parser.add_argument("--workdir", default=None, help="default: a new temporary folder")
    parser.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # the child
    arguments = parser.parse_args(argv)
    workdir = Path(arguments.workdir or tempfile.mkdtemp(prefix="catalog-bench-compressed-"))
    bucket_folder = workdir / "bucket"
    if arguments.measure:
        print(json.dumps(measure(bucket_folder, arguments.measure, arguments.chunk_bytes)))
        return 0

    compressions = [name.strip() for name in arguments.compressions.split(",") if name.strip()]
    unknown = set(compressions) - {"gzip", "zstd"}
    if unknown:
        parser.error(f"unknown compression(s): {', '.join(sorted(unknown))}")
    started = time.perf_counter()
    paths = generate(bucket_folder, arguments.size_mb, compressions)
    prepared = time.perf_counter() - started
    results = {
        name: _child(bucket_folder, path.name, arguments.chunk_bytes)
        for name, path in paths.items()
    }
    plain = results["plain"]
    for name in compressions:
        result = results[name]
        result["ratio"] = round(result["decompressed_mb"] / result["object_mb"], 1)
        result["seconds_vs_plain"] = round(result["seconds"] / plain["seconds"], 2)
        result["peak_rss_mb_vs_plain"] = round(result["peak_rss_mb"] - plain["peak_rss_mb"], 1)
    print(
        json.dumps(
            {
                "size_mb": arguments.size_mb,
                "chunk_mb": round(arguments.chunk_bytes / 1e6, 1),
                "workdir": str(workdir),
                "prepare_seconds": round(prepared, 1),
                "plan": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
