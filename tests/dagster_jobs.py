"""Job factories the Dagster tests run, importable by module name (re-execution needs it).

The only stand-in here is for the object store's failures: `FaultyBucketResource` wraps a
real bucket and, for reads of one byte range, fails a number of times or overwrites the
object just before reading it. Everything else is the real code location.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg

from catalog_pipeline.core.bucket import Bucket, ObjectInfo
from catalog_pipeline.definitions import build_definitions
from catalog_pipeline.executor import IN_PROCESS as IN_PROCESS_MODE
from catalog_pipeline.executor import execution_run_config
from catalog_pipeline.jobs import INGEST_JOB
from catalog_pipeline.resources.catalog import BucketResource, CatalogDatabase, IngestSettings

# JSON: {"start": N, "markers": DIR} and one of "failures": N, "overwrite_with": TEXT,
# "hang_seconds": S (the read writes its process id to DIR/pid first, for a test to kill).
FAULT_SETTING = "CATALOG_TEST_FAULT"


class _FaultyBucket:
    def __init__(self, inner: Bucket, fault: dict) -> None:
        self.inner = inner
        self.url = inner.url
        self.fault = fault

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def read_range(self, info: ObjectInfo, start: int, end: int) -> bytes:
        if start == self.fault.get("start"):
            markers = Path(self.fault["markers"])
            markers.mkdir(parents=True, exist_ok=True)
            attempt = len(list(markers.iterdir())) + 1
            (markers / f"attempt-{attempt}").touch()
            if "hang_seconds" in self.fault:  # a step to kill: say where it runs, then wait
                (markers / "pid").write_text(str(os.getpid()))
                time.sleep(self.fault["hang_seconds"])
            if "overwrite_with" in self.fault:
                self.inner.put(info.key, self.fault["overwrite_with"].encode())
            elif attempt <= self.fault.get("failures", 0):
                raise ConnectionError(f"injected read failure {attempt} at byte {start}")
        return self.inner.read_range(info, start, end)


class FaultyBucketResource(BucketResource):
    """The configured bucket, with the fault described by `CATALOG_TEST_FAULT` (if any)."""

    def open(self) -> Bucket:
        bucket = super().open()
        fault = os.environ.get(FAULT_SETTING)
        return _FaultyBucket(bucket, json.loads(fault)) if fault else bucket


def resources(bucket_url: str, database_url: str, chunk_bytes: int, endpoint_url=None) -> dict:
    return {
        "bucket": FaultyBucketResource(url=bucket_url, endpoint_url=endpoint_url),
        "catalog_db": CatalogDatabase(url=database_url),
        "ingest_settings": IngestSettings(chunk_bytes=chunk_bytes),
    }


def faulty_ingest_job() -> dg.JobDefinition:
    """The ingest job on resources named by environment variables that each test sets.

    `EnvVar`s, because Dagster caches a reconstructed job: values are read at each run.
    """
    return build_definitions(
        resources(
            dg.EnvVar("CATALOG_TEST_BUCKET_URL"),
            dg.EnvVar("CATALOG_TEST_DATABASE_URL"),
            dg.EnvVar.int("CATALOG_TEST_CHUNK_BYTES"),
        )
    ).resolve_job_def(INGEST_JOB)


IN_PROCESS = execution_run_config(IN_PROCESS_MODE)


def execute_faulty_ingest(
    instance: dg.DagsterInstance,
    object_key: str,
    run_config: dict = IN_PROCESS,
    reexecution_of: str | None = None,
):
    """A run of `faulty_ingest_job` for `object_key`'s partition, or a re-execution of
    run `reexecution_of` from its failure."""
    from catalog_pipeline.assets.partitions import partition_key_for, source_csvs

    partition = partition_key_for(object_key)
    instance.add_dynamic_partitions(source_csvs.name, [partition])
    options = (
        dg.ReexecutionOptions.from_failure(reexecution_of, instance) if reexecution_of else None
    )
    return dg.execute_job(
        dg.reconstructable(faulty_ingest_job),
        instance,
        run_config=run_config,
        tags=None if reexecution_of else {"dagster/partition": partition},
        reexecution_options=options,
        raise_on_error=False,
    )
