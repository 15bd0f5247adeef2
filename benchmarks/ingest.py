"""Ingest throughput and memory against the machine's physical limit and the usual approach.

    python -m benchmarks.ingest --rows 1000000 --json

Measured in the same run, on the same generated file and the same PostgreSQL:
- `raw_copy`: `COPY` of the file into an empty unindexed table of text columns (the limit);
- `naive_pandas`: `pandas.read_csv` + our row validation + `DataFrame.to_sql` into a staging
  table + one `INSERT … ON CONFLICT` upsert (what most people would write);
- `core`: our core ingest in one process (plan, chunks, finalize; no Dagster);
- `dagster`: the real `catalog_ingest_job` materialization of the partition, with the
  executor the sensor would pick (a concurrent step per core, plus one), and again with
  one step at a time;
- `dagster_celery`: the same materialization with `CATALOG_EXECUTOR=celery`, its steps on
  one `catalog-pipeline worker` of one step at a time per core, with a local Redis as
  broker (workers started and ready before the clock starts; needs `redis-server`);
- `dlt`: the peer a data engineer would pick instead, in its fastest idiomatic form: a
  `merge` resource on `sku` yielding the record batches of `pyarrow.csv.open_csv`, loaded
  as parquet through ADBC (`adbc_ingest` into dlt's staging table, then its delete-insert
  merge), into a fresh database; no validation, typing, invalid-row log or unique index;
- `core_rerun` and `dlt_rerun`: the same source's next scrape (5 % of the rows with a new
  price, generated once) loaded into the table the first file filled (that first load is
  not timed);
plus the core ingest into SQLite (the embedded default), chunk-planning MB/s and the sensor's
tick time over `--sensor-objects` objects. Every method runs in its own child process so
its peak RSS is its own, after the file has been read once so that each starts with it in
the page cache.

The machine's speed drifts by a third and more within minutes (these are shared virtual
machines), so `raw_copy` is measured three times, around the two methods compared with
it: raw_copy, core, dlt, raw_copy, dagster, dagster_celery, raw_copy, then the re-runs (core_rerun, then
dlt_rerun) and the rest. `core/raw_copy` divides by the mean of the two measurements
either side of `core`, `dagster/raw_copy` by those either side of `dagster`; the report
lists all three. `dlt` runs right after `core`, `dlt_rerun` right after `core_rerun`.

Without `--database-url`, a throwaway PostgreSQL is started (scripts/start-postgres.sh) and
stopped at the end. The file has ~5 % invalid rows of kinds a plain COPY can still load
(and pyarrow's CSV reader can read: no record with an extra field).

`dlt` needs the `bench` extra (`pip install -e '.[bench]'`); its pipeline state and
working files go to a temporary folder, removed after each run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from catalog_pipeline.core.chunking import DEFAULT_CHUNK_BYTES

REPO = Path(__file__).resolve().parents[1]
KEY = "bench_2026-01-01T00-00-00.csv"
# The same source's next scrape (a day later, so it takes precedence over the first).
NEXT_KEY = "bench_2026-01-02T00-00-00.csv"
NEXT_SCRAPE_CHANGED = 0.05  # share of its rows with a new price
COPYABLE_KINDS = ("sku", "url", "price", "weight", "private", "name")  # not "columns"
METHODS = (
    "raw_copy",
    "naive_pandas",
    "core",
    "core_1_worker",
    "core_rerun",
    "dagster",
    "dagster_1_worker",
    "dagster_celery",
    "dlt",
    "dlt_rerun",
    "sqlite",
)
# The order methods run in: `raw_copy` either side of each method compared with it, `dlt`
# next to `core` (and one method from `dagster`), each re-run next to the other.
SCHEDULE = (
    "raw_copy",
    "core",
    "dlt",
    "raw_copy",
    "dagster",
    "dagster_celery",
    "raw_copy",
    "core_rerun",
    "dlt_rerun",
    "naive_pandas",
    "core_1_worker",
    "dagster_1_worker",
    "sqlite",
    "planning",
    "sensor",
)


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


class DescendantPeakRss:
    """Watches every descendant process while running: the largest peak RSS (VmHWM) any
    one of them reached. Linux only (reads /proc); 0 elsewhere.

    Worker processes forked from a fork server are not our children, so
    `RUSAGE_CHILDREN` does not see them."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in _descendants(os.getpid()):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue  # it just ended
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_mb = max(self.peak_mb, round(int(line.split()[1]) / 1024, 1))

    def __enter__(self) -> DescendantPeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def _descendants(root: int) -> list[int]:
    """Every process below `root`, read from each process's `task/*/children` lists: a few
    files a sweep instead of every process's `stat`, since this runs beside the methods
    it measures (a sweep of all ~100-200 processes cost 2-5 ms of CPU every 0.2 s)."""
    if not Path(f"/proc/{root}/task/{root}/children").exists():
        return _descendants_by_scan(root)  # a kernel without CONFIG_PROC_CHILDREN
    found, frontier = [], [root]
    while frontier:
        for children in Path(f"/proc/{frontier.pop()}/task").glob("*/children"):
            try:
                pids = [int(pid) for pid in children.read_text().split()]
            except OSError:
                continue  # it just ended
            found.extend(pids)
            frontier.extend(pids)
    return found


def _descendants_by_scan(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.extend(children)
        frontier.extend(children)
    return found


def _result(rows: int, size: int, seconds: float, **extra) -> dict:
    return {
        "rows": rows,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows / seconds),
        "mb_per_s": round(size / 1e6 / seconds, 1),
        "peak_rss_mb": _peak_rss_mb(),
        **extra,
    }


def _fresh_engine(url: str):
    from sqlalchemy import text

    from catalog_pipeline.db.engine import make_engine, upgrade

    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    upgrade(engine)
    return engine


# --- the methods (each runs in a child process: `--method NAME`) -----------------------


def raw_copy(path: Path, url: str) -> dict:
    from catalog_pipeline.core.samples import HEADER
    from catalog_pipeline.db.engine import make_engine

    engine = make_engine(url)
    columns = ", ".join(f"c{index} text" for index in range(len(HEADER)))
    driver = engine.raw_connection()
    try:
        with driver.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS raw_copy")
            cursor.execute(f"CREATE TABLE raw_copy ({columns})")
        driver.commit()
        started = time.perf_counter()
        with (
            driver.cursor() as cursor,
            cursor.copy("COPY raw_copy FROM STDIN WITH (FORMAT csv, HEADER true)") as copy,
            open(path, "rb") as handle,
        ):
            while block := handle.read(1 << 20):
                copy.write(block)
        driver.commit()
        seconds = time.perf_counter() - started
        with driver.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM raw_copy")
            rows = cursor.fetchone()[0]
            cursor.execute("DROP TABLE raw_copy")
        driver.commit()
    finally:
        driver.close()
    return _result(rows, path.stat().st_size, seconds)


def naive_pandas(path: Path, url: str) -> dict:
    import pandas as pd
    from sqlalchemy import text

    from catalog_pipeline.core.items import content_hash
    from catalog_pipeline.core.validation import map_header, validate_record

    # Its fastest setting for this row-wise code: with pyarrow installed (we depend on it),
    # pandas 3 backs `str` columns with Arrow, and reading them back row by row into
    # Python is then about 1.4 times slower and holds twice the memory (measured).
    pd.set_option("mode.string_storage", "python")
    engine = _fresh_engine(url)
    started = time.perf_counter()
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    mapping = map_header(list(frame.columns))
    valid, invalid = [], []
    for position, fields in enumerate(frame.itertuples(index=False, name=None)):
        item, reasons = validate_record(fields, mapping)
        if item is None:
            invalid.append({"row": position, "reasons": json.dumps(reasons)})
            continue
        valid.append(
            {
                "sku": item.sku,
                "name": item.name,
                "brand": item.brand,
                "category": item.category,
                "description": item.description,
                "price": item.price,
                "url": item.url,
                "weight_grams": item.weight_grams,
                "play_count": item.play_count,
                "position": position,
                "content_hash": content_hash(item),
            }
        )
    items = pd.DataFrame(valid)
    items.to_sql("naive_stage", engine, if_exists="replace", index=False, chunksize=10_000)
    pd.DataFrame(invalid).to_sql(
        "naive_invalid", engine, if_exists="replace", index=False, chunksize=10_000
    )
    columns = [name for name in items.columns if name != "position"]
    names = ", ".join(columns)
    updates = ", ".join(f"{name} = excluded.{name}" for name in columns if name != "sku")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE naive_items (LIKE naive_stage)"))
        connection.execute(text("ALTER TABLE naive_items ADD UNIQUE (sku)"))
        connection.execute(
            text(
                f"INSERT INTO naive_items ({names}) SELECT DISTINCT ON (sku) {names} "
                f"FROM naive_stage ORDER BY sku, position DESC "
                f"ON CONFLICT (sku) DO UPDATE SET {updates}"
            )
        )
    seconds = time.perf_counter() - started
    return _result(len(frame), path.stat().st_size, seconds, valid=len(valid))


def core(
    path: Path, url: str, chunk_bytes: int, workers: int, loaded_first: Path | None = None
) -> dict:
    """Our core ingest of `path` into a fresh catalog; with `loaded_first` (a file in the
    same folder), that file is ingested first, untimed, and `path` is the re-run."""
    from catalog_pipeline.core.bucket import LocalBucket
    from catalog_pipeline.ingest import ingest_object

    engine = _fresh_engine(url)
    bucket = LocalBucket(path.parent)
    if loaded_first is not None:
        ingest_object(bucket, engine, loaded_first.name, chunk_bytes, workers=workers)
        _read_through(path)
    started = time.perf_counter()
    with DescendantPeakRss() as workers_rss:
        summary, _ = ingest_object(bucket, engine, path.name, chunk_bytes, workers=workers)
    seconds = time.perf_counter() - started
    return _result(
        summary.rows_total,
        path.stat().st_size,
        seconds,
        workers=workers,
        worker_peak_rss_mb=workers_rss.peak_mb if workers > 1 else None,
        valid=summary.rows_valid,
        invalid=summary.rows_invalid,
        verified_row_count=summary.verified_row_count,
    )


def dlt_load(path: Path, url: str, loaded_first: Path | None = None) -> dict:
    """dlt's fastest idiomatic load of `path` (see the module) into a fresh database; with
    `loaded_first`, that file is loaded first by the same pipeline, untimed, and `path`
    is the next run. The pipeline's state and files live in a temporary folder."""
    scratch = tempfile.mkdtemp(prefix="bench-dlt-")
    os.environ.update(
        {
            "DLT_DATA_DIR": scratch,  # dlt's global folder
            "DLT_PROJECT_DIR": scratch,  # where it looks for .dlt/ config (not the repo)
            "RUNTIME__DLTHUB_TELEMETRY": "false",
        }
    )
    import dlt
    from sqlalchemy import create_engine, make_url, text

    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    database = f"bench_dlt_{os.getpid()}_{time.time_ns()}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{database}"'))
    # dlt's PostgreSQL credentials require a password; a trust server ignores it.
    target = make_url(url).set(
        drivername="postgresql", database=database, password=make_url(url).password or "unused"
    )
    try:
        pipeline = dlt.pipeline(
            pipeline_name="bench",
            pipelines_dir=scratch,
            destination=dlt.destinations.postgres(
                credentials=target.render_as_string(hide_password=False)
            ),
            dataset_name="catalog",
        )
        if loaded_first is not None:
            pipeline.run(_dlt_items(loaded_first, [0]), loader_file_format="parquet")
            _read_through(path)
        read = [0]
        started = time.perf_counter()
        info = pipeline.run(_dlt_items(path, read), loader_file_format="parquet")
        seconds = time.perf_counter() - started
        load_path = _dlt_load_path(info)
        steps = {
            step.step: round((step.finished_at - step.started_at).total_seconds(), 2)
            for step in pipeline.last_trace.steps
            if step.step != "run"
        }
        with pipeline.sql_client() as client:
            loaded = client.execute_sql("SELECT count(*) FROM items")[0][0]
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(scratch, ignore_errors=True)
    return _result(
        read[0], path.stat().st_size, seconds, loaded=loaded, load_path=load_path, steps=steps
    )


def _dlt_items(path: Path, read: list[int]):
    """The resource: the file's record batches as pyarrow reads them, counted in `read`."""
    import dlt
    import pyarrow as pa
    import pyarrow.csv as arrow_csv

    from catalog_pipeline.core.samples import HEADER

    @dlt.resource(name="items", write_disposition="merge", primary_key="sku")
    def items():
        # Every column as text: prices like `$1,234.50` and counts like `1,234` are no
        # Arrow type, and a type guessed from the first block can fail on a later one.
        options = arrow_csv.ConvertOptions(column_types={name: pa.string() for name in HEADER})
        parse = arrow_csv.ParseOptions(newlines_in_values=True)  # quoted newlines
        with arrow_csv.open_csv(path, parse_options=parse, convert_options=options) as reader:
            for batch in reader:
                read[0] += batch.num_rows
                yield batch

    return items()


def _dlt_load_path(info) -> str:
    """How dlt loaded the items, from the jobs of its load package. PostgreSQL's client
    loads a parquet file only with `PostgresParquetCopyJob` (ADBC's `adbc_ingest`, a
    binary COPY), and dlt drops parquet from the formats it offers when no ADBC driver
    loads, so a parquet job for the table is the ADBC path; anything else is an error
    here, not a slower number."""
    formats = sorted(
        {
            job.job_file_info.file_format
            for package in info.load_packages
            for job in package.jobs["completed_jobs"]
            if job.job_file_info.table_name == "items"
        }
    )
    if "parquet" not in formats:
        raise RuntimeError(f"dlt loaded the items from {formats}, not parquet through ADBC")
    followups = "+".join(name for name in formats if name != "parquet")
    return f"parquet, adbc_ingest (binary COPY) into the staging table, then a {followups} merge"


def ingest_job():
    """The code location's ingest job (resources from the environment set by `dagster`)."""
    from catalog_pipeline.definitions import defs
    from catalog_pipeline.jobs import INGEST_JOB

    return defs.resolve_job_def(INGEST_JOB)


def dagster(
    path: Path, url: str, chunk_bytes: int, workers: int, execution: dict | None = None
) -> dict:
    os.environ.update(
        {
            "CATALOG_BUCKET_URL": f"file://{path.parent}",
            "CATALOG_DATABASE_URL": url,
            "CATALOG_CHUNK_BYTES": str(chunk_bytes),
        }
    )
    import dagster as dg

    from catalog_pipeline.assets.partitions import partition_key_for, source_csvs
    from catalog_pipeline.db.ingest import latest_summary

    engine = _fresh_engine(url)
    with (
        tempfile.TemporaryDirectory(prefix="bench-dagster-home-") as home,
        dg.instance_for_test(temp_dir=home) as instance,
    ):
        partition = partition_key_for(path.name)
        instance.add_dynamic_partitions(source_csvs.name, [partition])
        started = time.perf_counter()
        with DescendantPeakRss() as steps_rss:
            result = dg.execute_job(
                dg.reconstructable(ingest_job),
                instance=instance,
                run_config={
                    # What catalog_executor decides on a machine with `workers` cores
                    # (one concurrent step per core plus one); one worker, one step.
                    # (`dagster_celery` leaves it to CATALOG_EXECUTOR.)
                    **(
                        _execution_for(path.stat().st_size, chunk_bytes, workers)
                        if execution is None
                        else execution
                    ),
                    "loggers": {"console": {"config": {"log_level": "WARNING"}}},
                },
                tags={"dagster/partition": partition},
            )
        seconds = time.perf_counter() - started
    if not result.success:
        raise RuntimeError("the dagster materialization failed")
    summary = latest_summary(engine, path.name)
    return _result(
        summary.rows_total,
        path.stat().st_size,
        seconds,
        workers=workers,
        valid=summary.rows_valid,
        # Steps run in worker processes (in-process for small files: this one).
        chunk_step_peak_rss_mb=steps_rss.peak_mb or _peak_rss_mb(),
    )


def dagster_celery(path: Path, url: str, chunk_bytes: int, workers: int) -> dict:
    """`dagster` on Celery (`CATALOG_EXECUTOR=celery`): a Redis server and `workers`
    `catalog-pipeline worker` processes of one step at a time, started (and ready) before
    the clock starts, as they are in production."""
    environment = {
        "CATALOG_BUCKET_URL": f"file://{path.parent}",
        "CATALOG_DATABASE_URL": url,
        "CATALOG_CHUNK_BYTES": str(chunk_bytes),
        "CATALOG_EXECUTOR": "celery",
    }
    with tempfile.TemporaryDirectory(prefix="bench-celery-") as scratch:
        redis, broker = start_redis(Path(scratch))
        environment["CATALOG_CELERY_BROKER_URL"] = broker
        os.environ.update(environment)
        started = [_start_worker(f"bench{n}", Path(scratch), environment) for n in range(workers)]
        try:
            for process, log in started:
                _wait_ready(process, log)
            result = dagster(path, url, chunk_bytes, workers, execution={})
        finally:
            for process, _ in started:
                process.terminate()
            for process, _ in started:
                process.wait(timeout=60)
            redis.kill()
            redis.wait(timeout=10)
        chunk_steps = [
            len(re.findall(r"running step \S+process_chunk", log.read_text())) for _, log in started
        ]
    return {**result, "chunk_steps_per_worker": chunk_steps}


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    """Debian's `redis-server` on a free loopback port, without persistence; the process
    and its URL (also the Celery tests' broker)."""
    import socket

    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("dagster_celery needs redis-server (apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=folder,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)


def _start_worker(name: str, folder: Path, environment: dict) -> tuple[subprocess.Popen, Path]:
    log = folder / f"{name}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "catalog_pipeline.cli", "worker", "--name", name,
         "--concurrency", "1"],
        env={**os.environ, **environment},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    return process, log


def _wait_ready(process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while " ready." not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"a Celery worker did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def _execution_for(size: int, chunk_bytes: int, workers: int) -> dict:
    """The run config for catalog_executor's own decision on a `workers`-core machine."""
    from catalog_pipeline.executor import choose_execution, execution_run_config

    chosen = choose_execution(size, chunk_bytes, steps=1 if workers == 1 else None, cores=workers)
    return execution_run_config(chosen.mode, chosen.max_concurrent)


def planning(path: Path, chunk_bytes: int) -> dict:
    from catalog_pipeline.core.bucket import LocalBucket
    from catalog_pipeline.ingest import scan_chunks

    bucket = LocalBucket(path.parent)
    info = bucket.head(path.name)
    started = time.perf_counter()
    plan = scan_chunks(bucket, info, chunk_bytes)  # what plan_object does, without storing it
    seconds = time.perf_counter() - started
    return {
        "mb_per_s": round(info.size / 1e6 / seconds, 1),
        "seconds": round(seconds, 2),
        "chunks": len(plan.chunks),
        "records": plan.record_count,
    }


def sensor_ticks(objects: int, workdir: Path) -> dict:
    """Tick the real sensor like the daemon does until it has requested every object."""
    import dagster as dg

    from catalog_pipeline.resources.catalog import BucketResource, CatalogDatabase, IngestSettings
    from catalog_pipeline.sensors.objects import new_csv_objects_sensor

    folder = workdir / "sensor-bucket"
    body = b"sku,name,url\nA-1,Tent,https://shop.example.com/a\n"
    for number in range(objects):
        path = folder / f"shop{number % 10}" / f"shop{number % 10}_{number:06d}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    resources = {
        "bucket": BucketResource(url=f"file://{folder}"),
        "catalog_db": CatalogDatabase(url=f"sqlite:///{workdir / 'sensor.sqlite'}"),
        "ingest_settings": IngestSettings(),
    }
    seconds: list[float] = []
    requested: set[str] = set()
    cursor = None
    with dg.instance_for_test() as instance:
        while len(requested) < objects and len(seconds) < objects:
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
            started = time.perf_counter()
            result = new_csv_objects_sensor(context)
            for request in result.dynamic_partitions_requests:
                instance.add_dynamic_partitions(
                    request.partitions_def_name, list(request.partition_keys)
                )
            seconds.append(time.perf_counter() - started)
            requested.update(request.run_key for request in result.run_requests)
            cursor = result.cursor
    return {
        "objects": objects,
        "ticks": len(seconds),
        "requested": len(requested),
        "mean_tick_seconds": round(sum(seconds) / len(seconds), 3),
        "max_tick_seconds": round(max(seconds), 3),
    }


# --- orchestration ---------------------------------------------------------------------


def _child(method: str, arguments: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        "-m",
        "benchmarks.ingest",
        "--method",
        method,
        "--file",
        str(arguments.file),
        "--database-url",
        arguments.database_url,
        "--chunk-bytes",
        str(arguments.chunk_bytes),
        "--workers",
        str(arguments.workers),
        "--sensor-objects",
        str(arguments.sensor_objects),
        "--next-file",
        str(arguments.next_file),
    ]
    _read_through(Path(arguments.file))
    if method.endswith("_rerun"):
        _read_through(Path(arguments.next_file))
    output = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if output.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{output.stderr[-4000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def _read_through(path: Path) -> None:
    """Read the file once, so every method starts with it in the page cache. These
    virtual machines page out memory left untouched for seconds (DAMON reclaim), file
    pages included: the method run after a pause otherwise reads part of the file from
    disk (planning measured 290 MB/s that way, 1,090 right after)."""
    with path.open("rb", buffering=0) as file:
        while file.read(8 << 20):
            pass


def _run_method(arguments: argparse.Namespace) -> dict:
    path = Path(arguments.file)
    method = arguments.method
    if method == "raw_copy":
        return raw_copy(path, arguments.database_url)
    if method == "naive_pandas":
        return naive_pandas(path, arguments.database_url)
    if method == "core":
        return core(path, arguments.database_url, arguments.chunk_bytes, arguments.workers)
    if method == "core_1_worker":
        return core(path, arguments.database_url, arguments.chunk_bytes, 1)
    if method == "core_rerun":
        next_path = Path(arguments.next_file)
        return core(
            next_path, arguments.database_url, arguments.chunk_bytes, arguments.workers, path
        )
    if method == "dlt":
        return dlt_load(path, arguments.database_url)
    if method == "dlt_rerun":
        return dlt_load(Path(arguments.next_file), arguments.database_url, path)
    if method == "sqlite":
        database = path.parent.parent / "bench.sqlite"
        for stale in (database, *database.parent.glob(f"{database.name}-*")):
            stale.unlink(missing_ok=True)  # a fresh database, as PostgreSQL's schema is
        return core(path, f"sqlite:///{database}", arguments.chunk_bytes, arguments.workers)
    if method == "dagster":
        return dagster(path, arguments.database_url, arguments.chunk_bytes, arguments.workers)
    if method == "dagster_1_worker":
        return dagster(path, arguments.database_url, arguments.chunk_bytes, 1)
    if method == "dagster_celery":
        return dagster_celery(
            path, arguments.database_url, arguments.chunk_bytes, arguments.workers
        )
    if method == "planning":
        return planning(path, arguments.chunk_bytes)
    if method == "sensor":
        return sensor_ticks(arguments.sensor_objects, Path(tempfile.mkdtemp(prefix="bench-")))
    raise ValueError(f"unknown method {method!r}")


def write_next_scrape(path: Path, rows: int, seed: int = 27) -> None:
    """The same source's next scrape: the benchmark file's rows with a new price in
    `NEXT_SCRAPE_CHANGED` of them (never in a row whose price is what made it invalid,
    so the valid rows stay the same), chosen and priced deterministically."""
    from catalog_pipeline.core.samples import HEADER, sample_rows

    chooser = random.Random(seed)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(HEADER)
        for row in sample_rows(rows, invalid_kinds=COPYABLE_KINDS):
            if chooser.random() < NEXT_SCRAPE_CHANGED and row[5] != "12,34.5":
                row[5] = f"{chooser.uniform(3, 2500):.2f}"
            writer.writerow(row)


def _mean_of(runs: list[dict]) -> dict:
    """Several runs of one method as one result: mean rate, highest peak RSS, each run's
    rate in `runs_rows_per_s`."""
    seconds = sum(run["seconds"] for run in runs) / len(runs)
    return {
        "rows": runs[0]["rows"],
        "seconds": round(seconds, 2),
        "rows_per_s": round(sum(run["rows_per_s"] for run in runs) / len(runs)),
        "mb_per_s": round(sum(run["mb_per_s"] for run in runs) / len(runs), 1),
        "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
        "runs_rows_per_s": [run["rows_per_s"] for run in runs],
    }


def _rounds(arguments: argparse.Namespace, say) -> dict:
    """`--only`: the methods in turn, `--repeat` rounds; each round's ratio of every method
    to the first, so each ratio compares runs minutes apart at most."""
    methods = arguments.only.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"--only: unknown methods {sorted(unknown)}; known: {METHODS}")
    runs: dict[str, list[dict]] = {method: [] for method in methods}
    for round_number in range(1, arguments.repeat + 1):
        for method in methods:
            say(f"round {round_number}: {method} ...")
            runs[method].append(_child(method, arguments))
            say(f"  {json.dumps(runs[method][-1])}")
    first = methods[0]
    return {
        "rows": arguments.rows,
        "chunk_mb": round(arguments.chunk_bytes / 1e6, 1),
        "cores": os.cpu_count(),
        "runs": runs,
        "ratios": {
            f"{method}/{first}": [
                _ratio(mine, reference)
                for mine, reference in zip(runs[method], runs[first], strict=True)
            ]
            for method in methods[1:]
        },
    }


def _ratio(numerator: dict, denominator: dict) -> float:
    return round(numerator["rows_per_s"] / denominator["rows_per_s"], 3)


def _start_postgres() -> tuple[str, str]:
    output = (
        subprocess.run(
            [str(REPO / "scripts" / "start-postgres.sh")],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()
    )
    return output[-1], output[0].split(": ", 1)[1].split(" (", 1)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES)
    parser.add_argument("--database-url", default=None, help="PostgreSQL (default: start one)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--sensor-objects", type=int, default=10_000)
    parser.add_argument("--workdir", default=None, help="keeps the generated file between runs")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument(
        "--only",
        help="comma-separated methods to run alone, interleaved, instead of the whole "
        "schedule; the report has each one's runs and its ratio to the first per round "
        "(e.g. --only dagster,dagster_celery --repeat 3)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of --only")
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--next-file", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.method:
        print(json.dumps(_run_method(arguments)))
        return 0

    def say(message: str) -> None:
        if not arguments.json:
            print(message, file=sys.stderr, flush=True)

    workdir = Path(arguments.workdir or tempfile.mkdtemp(prefix="catalog-bench-"))
    path = workdir / "bucket" / KEY
    next_path = path.with_name(NEXT_KEY)
    path.parent.mkdir(parents=True, exist_ok=True)
    marker = workdir / f"rows-{arguments.rows}"
    if not marker.exists() or not next_path.exists():
        from catalog_pipeline.core.samples import write_sample_csv

        say(f"generating {arguments.rows:,} rows into {path} and its next scrape ...")
        for stale in workdir.glob("rows-*"):
            stale.unlink()
        write_sample_csv(path, arguments.rows, invalid_kinds=COPYABLE_KINDS)
        write_next_scrape(next_path, arguments.rows)
        marker.touch()
    arguments.file = str(path)
    arguments.next_file = str(next_path)
    started_postgres = None
    if not arguments.database_url:
        arguments.database_url, started_postgres = _start_postgres()
    try:
        if arguments.only:
            print(json.dumps(_rounds(arguments, say), indent=None if arguments.json else 2))
            return 0
        results: dict = {}
        references: list[dict] = []
        for method in SCHEDULE:
            say(f"{method} ...")
            result = _child(method, arguments)
            say(f"  {json.dumps(result)}")
            if method == "raw_copy":
                references.append(result)
            else:
                results[method] = result
    finally:
        if started_postgres:
            subprocess.run([str(REPO / "scripts" / "stop-postgres.sh"), started_postgres])
    report = {
        "rows": arguments.rows,
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "chunk_mb": round(arguments.chunk_bytes / 1e6, 1),
        "cores": os.cpu_count(),
        "raw_copy": _mean_of(references),
        **{method: results[method] for method in METHODS if method != "raw_copy"},
        "sqlite_rows_per_s": results["sqlite"]["rows_per_s"],
        "planning_mb_per_s": results["planning"]["mb_per_s"],
        "sensor": results["sensor"],
        "ratios": {
            "dagster/core": _ratio(results["dagster"], results["core"]),
            "core/dlt": _ratio(results["core"], results["dlt"]),
            "core/dlt_rerun": _ratio(results["core_rerun"], results["dlt_rerun"]),
            "dagster/dlt": _ratio(results["dagster"], results["dlt"]),
            "core/naive_pandas": _ratio(results["core"], results["naive_pandas"]),
            "core/raw_copy": _ratio(results["core"], _mean_of(references[0:2])),
            "dagster/raw_copy": _ratio(results["dagster"], _mean_of(references[1:3])),
            "core/core_1_worker": _ratio(results["core"], results["core_1_worker"]),
            "dagster/dagster_1_worker": _ratio(results["dagster"], results["dagster_1_worker"]),
            "dagster_celery/dagster": _ratio(results["dagster_celery"], results["dagster"]),
        },
        # Issue 27's (they replace issue 7's `dagster/raw_copy` 0.5).
        "targets": {
            "dagster/core": 0.85,
            "core/dlt": 1.5,
            "core/dlt_rerun": 2.0,
            "dagster/dlt": 1.3,
            "core/raw_copy": 0.6,
            "core/naive_pandas": 2.5,
            "sqlite_rows_per_s": 20_000,
            "chunk_step_peak_rss_mb": round(10 * arguments.chunk_bytes / 1e6 + 250, 1),
        },
    }
    print(json.dumps(report, indent=None if arguments.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
