"""`new_csv_objects_sensor` at bucket scale: full sweeps of N objects on a local folder
and on moto's S3 server, extrapolated to a million objects; the tick against N live
partitions; the asset's partition GraphQL query at 10k and 100k partitions.

Every tick is evaluated as the daemon evaluates it (`evaluate_tick`, with Dagster's own
validation of the requested partitions), its partition requests applied to a real
(SQLite) instance, the catalog a SQLite file; runs are not created (that is the daemon's
work, after the tick). Sweeps, per bucket:

- `new`: every object recorded in `source_files` and with a live partition except
  `--new` of them spread over the key space: those are header-probed and requested (at
  most `REQUEST_LIMIT` a tick, so a backlog takes extra ticks by design);
- `known_live`: every object recorded and its partition live (N live partitions): what a
  steady-state tick pays;
- `known_retired`: every object recorded 40 days ago and no partition at all (a fresh
  instance, or every partition retired): the database alone decides.

Extrapolation to 1M objects: a tick costs a fixed part (starting the listing: one
request on S3, a walk and sort of the whole folder locally, which grows with the bucket)
plus a cost per object listed; at 1M, ticks = objects × cost / (budget − fixed), and a
sweep takes that many ticks of the sensor interval (30 s).

    python benchmarks/sensor.py --objects 10000            # a quick run
    python benchmarks/sensor.py --objects 100000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import dagster as dg  # noqa: E402
from sqlalchemy import insert, update  # noqa: E402

from catalog_pipeline import discovery  # noqa: E402
from catalog_pipeline.assets.partitions import partition_key_for, source_csvs  # noqa: E402
from catalog_pipeline.db.engine import make_engine, upgrade  # noqa: E402
from catalog_pipeline.db.tables import source_files  # noqa: E402
from catalog_pipeline.definitions import build_definitions  # noqa: E402
from catalog_pipeline.resources.catalog import BucketResource, CatalogDatabase  # noqa: E402
from catalog_pipeline.sensors.objects import (  # noqa: E402
    SweepCursor,
    build_new_csv_objects_sensor,
)

BODY = b"sku,name,url\nA-1,Tent,https://shop.example.com/a\n"
TARGET_OBJECTS = 1_000_000
TARGET_SWEEP_SECONDS = 600
INTERVAL_SECONDS = 30
START = datetime(2026, 1, 1, tzinfo=UTC)
LISTED: list[int] = []
FOUND: list[discovery.Discovery] = []  # what each tick's `discover` call reported


def _recording(discover):
    def recorded(*args, **kwargs):
        found = discover(*args, **kwargs)
        FOUND.append(found)
        return found

    return recorded


discovery.discover = _recording(discovery.discover)


class CountingBucketResource(BucketResource):
    """The real bucket, counting the objects each tick lists."""

    def open(self):
        inner = super().open()
        LISTED.append(0)

        class Counting:
            url = inner.url

            def list_objects(self, start_after=None):
                for info in inner.list_objects(start_after=start_after):
                    LISTED[-1] += 1
                    yield info

            def __getattr__(self, name):
                return getattr(inner, name)

        return Counting()


def object_keys(count: int, prefix: str = "") -> list[str]:
    """Keys like a scraper fleet's: 100 sources, one scrape a second each."""
    return [
        f"{prefix}shop{n % 100:03d}/shop{n % 100:03d}_"
        f"{(START + timedelta(seconds=n)):%Y-%m-%dT%H-%M-%S}.csv"
        for n in range(count)
    ]


def fill_local(folder: Path, keys: list[str]) -> None:
    for key in keys:
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(BODY)


def fill_s3(bucket, keys: list[str]) -> None:
    def put(key: str) -> None:
        bucket.client.put_object(Bucket=bucket.bucket, Key=key, Body=BODY)

    with ThreadPoolExecutor(16) as pool:
        for _ in pool.map(put, keys, chunksize=256):
            pass


def record(engine, infos, age_days: float = 1) -> None:
    at = datetime.now(UTC) - timedelta(days=age_days)
    rows = [
        {
            "object_key": info.key,
            "etag": info.etag,
            "source": info.key.split("/")[-1].split("_")[0],
            "observed_at": at,
            "size": info.size,
            "status": "completed",
            "created_at": at,
            "updated_at": at,
        }
        for info in infos
    ]
    with engine.begin() as connection:
        for start in range(0, len(rows), 10_000):
            connection.execute(insert(source_files), rows[start : start + 10_000])


def add_partitions(instance, object_keys: list[str]) -> float:
    started = time.perf_counter()
    keys = [partition_key_for(key) for key in object_keys]
    for start in range(0, len(keys), 10_000):
        instance.add_dynamic_partitions(source_csvs.name, keys[start : start + 10_000])
    return time.perf_counter() - started


def sweep(instance, resources: dict, budget: float, max_ticks: int = 10_000) -> dict:
    """Tick until the sweep is complete; what each tick cost and did."""
    sensor = build_new_csv_objects_sensor(list_budget_seconds=budget)
    repository = build_definitions(resources).get_repository_def()
    cursor, ticks = None, []
    LISTED.clear()
    FOUND.clear()
    while len(ticks) < max_ticks:
        context = dg.build_sensor_context(
            instance=instance,
            instance_ref=instance.get_ref(),
            cursor=cursor,
            resources=resources,
            repository_def=repository,
        )
        started = time.perf_counter()
        data = sensor.evaluate_tick(context)
        evaluated = time.perf_counter() - started
        for request in data.dynamic_partitions_requests:  # what the daemon does next
            instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        ticks.append(
            {
                "seconds": evaluated,
                "apply_seconds": time.perf_counter() - started - evaluated,
                "listed": LISTED[-1],
                "requested": len(data.run_requests),
                "discover_seconds": FOUND[-1].seconds,
                "pages": FOUND[-1].pages,
                "stopped_by": FOUND[-1].stopped_by,
            }
        )
        cursor = data.cursor
        if SweepCursor.parse(cursor).new_sweep:
            break
    seconds = sum(tick["seconds"] for tick in ticks)
    listed = sum(tick["listed"] for tick in ticks)
    discovering = sum(tick["discover_seconds"] for tick in ticks)
    return {
        "ticks": len(ticks),
        "listed": listed,
        "pages": sum(tick["pages"] for tick in ticks),
        "requested": sum(tick["requested"] for tick in ticks),
        "stopped_by": [tick["stopped_by"] for tick in ticks],
        "evaluation_seconds": round(seconds, 2),
        # listing, comparing, probing; the rest of a tick: resources, run request validation
        "discover_seconds": round(discovering, 2),
        "other_seconds_per_tick": round((seconds - discovering) / len(ticks), 3),
        "max_tick_seconds": round(max(tick["seconds"] for tick in ticks), 2),
        "apply_partitions_seconds": round(sum(tick["apply_seconds"] for tick in ticks), 2),
        "objects_per_second": round(listed / seconds),
        "tick_seconds": [round(tick["seconds"], 2) for tick in ticks],
    }


def listing_seconds(bucket_resource: BucketResource, after: str) -> tuple[float, float]:
    """The bucket's own cost: before the first object after `after` (the fixed part of a
    tick), and of listing every object with nothing else done (the floor of a sweep)."""
    start = math.inf
    for _ in range(3):
        bucket = bucket_resource.open()
        started = time.perf_counter()
        next(iter(bucket.list_objects(start_after=after)))
        start = min(start, time.perf_counter() - started)
    bucket = bucket_resource.open()
    started = time.perf_counter()
    for _ in bucket.list_objects():
        pass
    return start, time.perf_counter() - started


def extrapolate(kind: str, phase: dict, budget: float) -> dict:
    """A 1M-object sweep from the `known_live` sweep of `phase`: ticks and seconds.

    Local folders: a tick costs its fixed part (what is not `discover`, plus the listing's
    start, which grows with the folder for `local`) and, per object, what `discover` spent
    beyond the listing's start. S3: the sweep is bound by the listing (the next page is
    listed while one is compared), so a page costs the bucket's page latency (as measured
    here: moto's, which sorts the whole bucket on every request, unlike S3 or R2) plus the
    sensor's work per object that the listing did not hide; `max_page_latency_seconds` is
    the latency up to which a 1M sweep takes 10 minutes at most."""
    known, objects = phase["known_live"], phase["objects"]
    start, other = phase["list_start_seconds"], known["other_seconds_per_tick"]
    ticks_allowed = TARGET_SWEEP_SECONDS // max(INTERVAL_SECONDS, math.ceil(budget + other))
    if kind == "s3":
        pages = math.ceil(objects / discovery.PAGE_SIZE)
        latency = phase["listing_only_seconds"] / pages
        exposed = max(known["discover_seconds"] - phase["listing_only_seconds"], 0) / objects
        per_page = latency + exposed * discovery.PAGE_SIZE
        work = math.ceil(TARGET_OBJECTS / discovery.PAGE_SIZE) * per_page
        ticks = math.ceil(work / budget)
        model = {
            "page_latency_seconds": round(latency, 3),
            "microseconds_per_object_not_hidden_by_the_listing": round(exposed * 1e6, 1),
            "max_page_latency_seconds": round(
                ticks_allowed * budget / (TARGET_OBJECTS / discovery.PAGE_SIZE)
                - exposed * discovery.PAGE_SIZE,
                3,
            ),
        }
    else:
        per_object = max(known["discover_seconds"] - start * known["ticks"], 0) / known["listed"]
        start_at_target = start * (TARGET_OBJECTS / objects if kind == "local" else 1)
        usable = budget - start_at_target  # the budget counts from the start of `discover`
        work = TARGET_OBJECTS * per_object
        ticks = math.ceil(work / usable) if usable > 0 else None
        other += start_at_target
        model = {
            "microseconds_per_object": round(per_object * 1e6, 1),
            "listing_start_seconds_per_tick": round(start_at_target, 2),
        }
    sweep_seconds = None if ticks is None else ticks * max(INTERVAL_SECONDS, budget + other)
    return {
        "objects": TARGET_OBJECTS,
        **model,
        "work_seconds": round(work, 1),
        "ticks": ticks,
        "sweep_seconds": None if sweep_seconds is None else round(sweep_seconds),
        "meets_10_minutes": sweep_seconds is not None and sweep_seconds <= TARGET_SWEEP_SECONDS,
    }


def bucket_phase(
    kind: str,
    workdir: Path,
    count: int,
    new: int,
    budget: float,
    endpoint=None,
    ranges: tuple[list[int], list[float]] = ([], []),
):
    print(f"{kind}: creating {count:,} objects", flush=True)
    started = time.perf_counter()
    if kind == "local":
        folder = workdir / "bucket"
        keys = object_keys(count)
        fill_local(folder, keys)
        resource = CountingBucketResource(url=folder.as_uri())
    else:
        from catalog_pipeline.core.bucket import S3Bucket

        bucket = S3Bucket(f"sensor-{os.getpid()}", "scrapes/", endpoint_url=endpoint)
        bucket.client.create_bucket(Bucket=bucket.bucket)
        keys = object_keys(count, bucket.prefix)
        fill_s3(bucket, keys)
        resource = CountingBucketResource(url=bucket.url, endpoint_url=endpoint)
    created = time.perf_counter() - started
    infos = list(resource.open().list_objects())
    assert len(infos) == count, (len(infos), count)
    step = max(count // new, 1) if new else count + 1
    fresh = {info.key for number, info in enumerate(infos) if number % step == step // 2}
    engine = make_engine(f"sqlite:///{workdir / 'catalog.sqlite'}")
    upgrade(engine)
    record(engine, [info for info in infos if info.key not in fresh])
    resources = {
        "bucket": resource,
        "catalog_db": CatalogDatabase(url=f"sqlite:///{workdir / 'catalog.sqlite'}"),
    }
    result: dict = {"objects": count, "create_seconds": round(created, 1)}
    with dg.instance_for_test() as instance:
        result["add_partitions_seconds"] = round(
            add_partitions(instance, [i.key for i in infos if i.key not in fresh]), 1
        )
        print(f"{kind}: sweep with {len(fresh):,} new objects", flush=True)
        result["new"] = {"new_objects": len(fresh), **sweep(instance, resources, budget)}
        record(engine, [info for info in infos if info.key in fresh])
        print(f"{kind}: sweep, all known, {count:,} live partitions", flush=True)
        result["known_live"] = sweep(instance, resources, budget)
        started = time.perf_counter()
        partitions = instance.get_dynamic_partitions(source_csvs.name)
        result["get_dynamic_partitions_seconds"] = round(time.perf_counter() - started, 3)
        result["live_partitions"] = len(partitions)
        if kind == "s3":
            result["ranges"] = ranges_phase(instance, resources, budget, endpoint, ranges)
    with engine.begin() as connection:
        connection.execute(
            update(source_files).values(updated_at=datetime.now(UTC) - timedelta(days=40))
        )
    with dg.instance_for_test() as instance:
        print(f"{kind}: sweep, all known, partitions retired", flush=True)
        result["known_retired"] = sweep(instance, resources, budget)
    known = result["known_live"]
    new_cost = result["new"]["evaluation_seconds"] - known["evaluation_seconds"]
    result["seconds_per_new_object"] = round(new_cost / max(len(fresh), 1), 4)
    start, listing = listing_seconds(resource, infos[len(infos) // 2].key)
    result["list_start_seconds"] = round(start, 3)
    result["listing_only_seconds"] = round(listing, 2)
    result["extrapolated"] = extrapolate(kind, result, budget)
    engine.dispose()
    return result


def ranges_phase(
    instance, resources: dict, budget: float, endpoint: str, ranges: tuple[list[int], list[float]]
) -> list[dict]:
    """The `known_live` sweep of the S3 bucket in lanes listed side by side
    (`CATALOG_SENSOR_LIST_CONCURRENCY`), straight to moto and through a loopback proxy
    that delays every listing request by `latency` seconds: a far bucket, as R2 or S3 is
    from a data centre's sensor daemon, whose page latency, unlike moto's, does not grow
    with the bucket. Each measurement is extrapolated to 1M objects at its measured cost
    per object (true of a bucket whose page latency is flat; moto's is not, see
    `extrapolate`)."""
    from tests.fault_proxy import LISTINGS, FaultProxy

    concurrencies, latencies = ranges
    measured = []
    for latency in latencies:
        with FaultProxy(endpoint, latency=latency, latency_match=LISTINGS) as proxy:
            url = resources["bucket"].url
            far = {**resources, "bucket": CountingBucketResource(url=url, endpoint_url=proxy.url)}
            for concurrency in concurrencies:
                print(f"s3: sweep, {latency:g} s added a page, {concurrency} lanes", flush=True)
                os.environ[discovery.LIST_CONCURRENCY_SETTING] = str(concurrency)
                try:
                    swept = sweep(instance, far if latency else resources, budget)
                finally:
                    del os.environ[discovery.LIST_CONCURRENCY_SETTING]
                per_object = swept["discover_seconds"] / swept["listed"]
                ticks = math.ceil(TARGET_OBJECTS * per_object / budget)
                tick = max(INTERVAL_SECONDS, budget + swept["other_seconds_per_tick"])
                measured.append(
                    {
                        "added_latency_seconds": latency,
                        "concurrency": concurrency,
                        "sweep_seconds": swept["evaluation_seconds"],
                        "ticks": swept["ticks"],
                        "microseconds_per_object": round(per_object * 1e6, 1),
                        "extrapolated_1m_ticks": ticks,
                        "extrapolated_1m_sweep_seconds": ticks * tick,
                        "meets_10_minutes": ticks * tick <= TARGET_SWEEP_SECONDS,
                    }
                )
                print(json.dumps(measured[-1]), flush=True)
    return measured


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    return process, f"http://127.0.0.1:{port}"


PARTITIONS_QUERY = """
query($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode {
      partitionKeysByDimension { name partitionKeys }
      assetPartitionStatuses {
        __typename
        ... on DefaultPartitionStatuses {
          materializedPartitions failedPartitions unmaterializedPartitions materializingPartitions
        }
      }
      partitionStats { numMaterialized numPartitions numFailed numMaterializing }
    }
  }
}"""


def graphql_phase(workdir: Path, partitions: int) -> dict:
    """The query behind the asset's Partitions page (keys, statuses, stats), over HTTP to
    `dagster dev`, with `partitions` partitions of which 1 % are materialized."""
    from tests.ui_support import DagsterDev, copy_instance_config

    home = workdir / f"graphql-{partitions}"
    home.mkdir(parents=True)
    copy_instance_config(home)
    keys = [partition_key_for(key) for key in object_keys(partitions)]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        add_partitions(instance, object_keys(partitions))
        for key in keys[::100]:
            instance.report_runless_asset_event(
                dg.AssetMaterialization(asset_key="catalog_items", partition=key)
            )
    dev = DagsterDev(
        home,
        {
            "CATALOG_BUCKET_URL": (workdir / "empty-bucket").as_uri(),
            "CATALOG_DATABASE_URL": f"sqlite:///{home / 'catalog.sqlite'}",
        },
    )
    try:
        dev.wait_for(dev.server_answers, "the webserver", timeout=300)
        dev.wait_for(
            lambda: dev.sensor_status("new_csv_objects_sensor"), "the code location", timeout=300
        )
        body = json.dumps(
            {"query": PARTITIONS_QUERY, "variables": {"assetKey": {"path": ["catalog_items"]}}}
        ).encode()
        seconds = []
        for _ in range(4):
            request = urllib.request.Request(
                f"{dev.base_url}/graphql", body, headers={"Content-Type": "application/json"}
            )
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=600) as response:
                payload = json.load(response)
            seconds.append(time.perf_counter() - started)
            assert "errors" not in payload, str(payload)[:2000]
        node = payload["data"]["assetNodeOrError"]
        assert len(node["partitionKeysByDimension"][0]["partitionKeys"]) == partitions
        return {
            "partitions": partitions,
            "materialized": node["partitionStats"]["numMaterialized"],
            "first_seconds": round(seconds[0], 2),
            "warm_seconds": round(sorted(seconds[1:])[1], 2),
            "response_bytes": len(json.dumps(payload)),
        }
    finally:
        dev.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--new", type=int, default=1_000, help="objects new to the catalog")
    parser.add_argument("--budget", type=float, default=discovery.LIST_BUDGET_SECONDS)
    parser.add_argument(
        "--backends",
        default="local,s3",
        help="local (a folder), s3 (the moto server)",
    )
    parser.add_argument(
        "--graphql", default="10000,100000", help="partition counts, or 'none' to skip"
    )
    parser.add_argument(
        "--concurrency",
        default="1,4,8",
        help="S3: lanes listed side by side in the extra known_live sweeps ('' skips)",
    )
    parser.add_argument(
        "--latency",
        default="0,0.5",
        help="S3: seconds a loopback proxy adds to each listing request in those sweeps",
    )
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument(
        "--reextrapolate", type=Path, help="recompute the extrapolations of a stored result"
    )
    args = parser.parse_args(argv)
    if args.reextrapolate:
        result = json.loads(args.reextrapolate.read_text())
        for kind, phase in result["backends"].items():
            phase["extrapolated"] = extrapolate(kind, phase, result["budget_seconds"])
        text = json.dumps(result, indent=2)
        print(text)
        if args.json:
            args.json.write_text(text + "\n")
        return 0
    result: dict = {
        "objects": args.objects,
        "new": args.new,
        "budget_seconds": args.budget,
        "interval_seconds": INTERVAL_SECONDS,
        "request_limit": discovery.REQUEST_LIMIT,
        "cpu_count": os.cpu_count(),
        "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="sensor-benchmark-") as scratch:
        workdir = Path(scratch)
        for kind in args.backends.split(","):
            (workdir / kind).mkdir()
            moto = None
            try:
                endpoint = None
                if kind == "s3":
                    moto, endpoint = start_moto()
                result["backends"][kind] = bucket_phase(
                    kind,
                    workdir / kind,
                    args.objects,
                    args.new,
                    args.budget,
                    endpoint,
                    (_numbers(args.concurrency, int), _numbers(args.latency, float)),
                )
            finally:
                if moto is not None:
                    moto.terminate()
                    moto.wait(timeout=30)
            print(json.dumps({kind: result["backends"][kind]["extrapolated"]}), flush=True)
        if args.graphql != "none":
            result["graphql"] = [
                graphql_phase(workdir, int(count)) for count in args.graphql.split(",")
            ]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


def _numbers(text: str, kind):
    return [kind(part) for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    raise SystemExit(main())
