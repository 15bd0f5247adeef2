"""`catalog_executor`: the one place that decides how a run's steps execute, whatever
launched the run (the sensor, a UI Materialize or backfill, `dg launch`, a schedule).

In `auto` mode (the default, so the Launchpad's empty config is valid) a run that
ingests an object reads the object's size (from the sensor's tag, else a HEAD) and
asks `jobs.choose_execution`: files of up to three chunks run every step in this
process; larger ones run their chunk steps in processes forked from a server that has
preloaded the code location. Runs of other jobs run in process. The choice and its
reason are the run's first engine event, so the run log says why.

A compressed object (`.csv.gz`, `.csv.zst`) is judged by the size it will have
decompressed, which is what its chunks cut: its size (compressed, from the tag or HEAD)
times `compression.ESTIMATED_RATIO` (5), so that a large compressed file still forks.

With `CATALOG_EXECUTOR=celery`, `auto` means Celery instead: every step of every run
goes to `catalog-pipeline worker` processes through dagster-celery's execution loop, on
its op's queue, each submitted step watched by a deadline (catalog_pipeline.workers).

Dagster's own `multi_or_in_process_executor` cannot do this: it takes its mode from
run config, which a UI launch leaves empty, so every UI run paid a fresh interpreter
per step (about 3 s each).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableJob
from dagster._core.events import EngineEventData
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.retries import RetryMode, get_retries_config
from dagster._core.executor.in_process import InProcessExecutor
from dagster._core.executor.multiprocess import MultiprocessExecutor

from catalog_pipeline import workers
from catalog_pipeline.assets.partitions import object_key_for
from catalog_pipeline.core.alerts import redact_secrets
from catalog_pipeline.core.chunking import checked_chunk_bytes
from catalog_pipeline.core.compression import ESTIMATED_RATIO, estimated_data_size
from catalog_pipeline.core.errors import root_cause
from catalog_pipeline.core.naming import compression_of

# Files up to this many chunks run every step in one process: a process per chunk costs
# more (interpreter start, imports) than a few chunks take to ingest.
IN_PROCESS_MAX_CHUNKS = 3
PRELOAD_MODULE = "catalog_pipeline.preload"
# The sensor knows each object's size when it requests a run; the executor reads it here
# instead of asking the bucket again.
OBJECT_SIZE_TAG = "catalog/object_size"
AUTO, IN_PROCESS, MULTIPROCESS, CELERY = "auto", "in_process", "multiprocess", "celery"


@dataclass(frozen=True, slots=True)
class Execution:
    """How one run executes: in process, or chunk steps in forked processes with at
    most `max_concurrent` at a time; `reason` is what the run log says."""

    mode: str
    max_concurrent: int | None
    size: int | None
    reason: str


def choose_execution(
    size: int | None,
    chunk_bytes: int,
    steps: int | None = None,
    multiprocess: bool = False,
    cores: int | None = None,
    compression: str | None = None,
) -> Execution:
    """In process for objects of up to three chunks (or of unknown size); for larger ones
    (or when `multiprocess` is asked for), one concurrent chunk step per core plus one,
    capped by the chunk count (`steps` sets the number instead).

    The extra step fills the time a step spends starting (a fork, rebuilding its run
    context, connecting: about 0.3 s of each 2.5 s step at 64 MiB) and waiting on the
    database, which would leave a core idle with exactly one step per core. Measured on
    2 cores, the 1,000,000-row benchmark file in four interleaved pairs: 3 steps took
    29.3-35.3 s where 2 took 32.9-38.9 s. The core path without Dagster gains nothing
    from a third worker (its workers never restart), so this is Dagster's step start.

    `size` is the object's; with `compression` it is the compressed size, and the chunks
    are counted from the estimated decompressed size (`Execution.size` is that estimate).
    """
    checked_chunk_bytes(chunk_bytes)  # a clear error, not a division by zero
    compressed_size, size = size, estimated_data_size(size, compression)
    chunks = None if size is None else max(1, -(-size // chunk_bytes))
    if size is None:
        described = "object size unknown"
    elif compression is None:
        described = f"{size:,} bytes, {chunks} chunk{'s' * (chunks != 1)}"
    else:
        described = (
            f"about {size:,} bytes decompressed (a {compressed_size:,}-byte {compression} "
            f"object, {ESTIMATED_RATIO}x), {chunks} chunk{'s' * (chunks != 1)}"
        )
    if not multiprocess and (chunks is None or chunks <= IN_PROCESS_MAX_CHUNKS):
        return Execution(IN_PROCESS, None, size, f"{described} of {chunk_bytes:,} bytes")
    if steps is None:
        steps = (cores or os.cpu_count() or 1) + 1
    workers = max(1, steps if chunks is None else min(steps, chunks))
    return Execution(
        MULTIPROCESS,
        workers,
        size,
        f"{described} of {chunk_bytes:,} bytes: {workers} chunk steps at a time, forked "
        "from a server with the code location preloaded",
    )


def execution_run_config(
    mode: str = AUTO, max_concurrent: int | None = None, start_method: str | None = None
) -> dict:
    """The run config that asks `catalog_executor` for `mode` (tests and benchmarks set
    it outright; launches leave it out and get `auto`)."""
    config: dict = {"mode": mode}
    if max_concurrent is not None:
        config["max_concurrent"] = max_concurrent
    if start_method is not None:
        config["start_method"] = start_method
    return {"execution": {"config": config}}


PARTITION_TAG = "dagster/partition"
# The ingest graph's steps (catalog_ingest.plan_chunks, .process_chunk[chunk_N], .finalize):
# a re-execution from failure runs only some of them, and is an ingest all the same.
INGEST_STEP_PREFIX = "catalog_ingest."

EXECUTOR_CONFIG = {
    "mode": dg.Field(
        dg.Enum(
            "CatalogExecutionMode",
            [
                dg.EnumValue(AUTO),
                dg.EnumValue(IN_PROCESS),
                dg.EnumValue(MULTIPROCESS),
                dg.EnumValue(CELERY),
            ],
        ),
        default_value=AUTO,
        description="auto: what CATALOG_EXECUTOR says: with `celery`, every step on the "
        "Celery workers; else (the default) in process for an object of up to three "
        "chunks and chunk steps in forked processes for larger ones. in_process, "
        "multiprocess or celery force one of them.",
    ),
    "max_concurrent": dg.Field(
        dg.Noneable(int),
        default_value=None,
        description="Chunk steps at a time in multiprocess mode. Default: one per core "
        "plus one, and never more than the object's chunks.",
    ),
    "start_method": dg.Field(
        dg.Enum("CatalogStartMethod", [dg.EnumValue("forkserver"), dg.EnumValue("spawn")]),
        default_value="forkserver",
        description="How chunk step processes start: forked from a server that preloaded "
        "the code location (about 0.2 s a step), or a fresh interpreter (about 3 s).",
    ),
    "retries": get_retries_config(),
}


@dg.executor(name="catalog_executor", config_schema=EXECUTOR_CONFIG)
def catalog_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    """In process for small objects, forked chunk steps for large ones (see the module)."""
    config = init_context.executor_config
    can_fork = (
        isinstance(init_context.job, ReconstructableJob) and init_context.instance.is_persistent
    )
    mode = config["mode"]
    if mode == AUTO and workers.executor_choice() == CELERY:
        mode = CELERY
    if mode in (MULTIPROCESS, CELERY) and not can_fork:
        raise dg.DagsterInvariantViolationError(
            f"catalog_executor: {mode} mode needs a job loaded from a code location "
            "and a persistent Dagster instance (DAGSTER_HOME); use mode: in_process here"
        )
    return SizeAwareExecutor(
        mode=mode,
        max_concurrent=config["max_concurrent"],
        start_method=config["start_method"],
        retries=RetryMode.from_config(config["retries"]),
        can_fork=can_fork,
    )


class SizeAwareExecutor(dg.Executor):
    def __init__(
        self,
        mode: str,
        max_concurrent: int | None,
        start_method: str,
        retries: RetryMode,
        can_fork: bool,
    ) -> None:
        self._mode = mode
        self._start_method = start_method
        self._max_concurrent = max_concurrent
        self._retries = retries
        self._can_fork = can_fork
        self._celery = workers.CelerySettings.from_environment() if mode == CELERY else None

    @property
    def retries(self) -> RetryMode:
        return self._retries

    def app_args(self) -> dict:
        """The Celery app's arguments (dagster-celery's execution loop asks its executor)."""
        assert self._celery is not None
        return self._celery.app_args(self._retries)

    def execute(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[dg.DagsterEvent]:
        if self._celery is not None:
            yield from self._execute_on_celery(plan_context, execution_plan)
            return
        execution = self.decide(plan_context, execution_plan)
        yield dg.DagsterEvent.engine_event(
            plan_context,
            f"catalog_executor: {execution.mode.replace('_', '-')}, {execution.reason}",
            EngineEventData(
                metadata={
                    "mode": execution.mode,
                    "max_concurrent": execution.max_concurrent or 1,
                    "object_bytes": execution.size if execution.size is not None else -1,
                }
            ),
        )
        if execution.mode == IN_PROCESS:
            delegate: dg.Executor = InProcessExecutor(retries=self._retries)
        else:
            delegate = MultiprocessExecutor(
                retries=self._retries,
                max_concurrent=execution.max_concurrent,
                start_method=self._start_method,
                explicit_forkserver_preload=(
                    [PRELOAD_MODULE] if self._start_method == "forkserver" else None
                ),
            )
        yield from delegate.execute(plan_context, execution_plan)

    def _execute_on_celery(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[dg.DagsterEvent]:
        from celery.exceptions import DuplicateTaskNameWarning
        from dagster_celery.core_execution_loop import core_celery_execution_loop
        from dagster_celery.executor import _submit_task

        celery = self._celery
        assert celery is not None
        queues = sorted(
            {
                execution_plan.get_step_by_key(key).tags.get(
                    workers.QUEUE_TAG, workers.DEFAULT_QUEUE
                )
                for key in execution_plan.step_keys_to_execute
            }
        )
        yield dg.DagsterEvent.engine_event(
            plan_context,
            f"catalog_executor: celery, every step on the workers of queue"
            f"{'s' * (len(queues) != 1)} {', '.join(queues)} (broker "
            f"{redact_secrets(celery.broker_url)}; a step not finished "
            f"{celery.step_timeout:,} s after a worker started it fails)",
            EngineEventData(
                metadata={
                    "mode": CELERY,
                    "queues": ", ".join(queues),
                    "visibility_timeout_seconds": celery.visibility_timeout,
                    "step_timeout_seconds": celery.step_timeout,
                }
            ),
        )

        run_steps = workers.RunSteps()

        def submit(app, context, step, queue, priority, known_state):
            with warnings.catch_warnings():
                # dagster-celery registers its step task again on each submission; Celery
                # warns and keeps the first, which is the same task.
                warnings.simplefilter("ignore", DuplicateTaskNameWarning)
                result = _submit_task(app, context, step, queue, priority, known_state)
            return workers.StepDeadline(
                result, context.for_step(step), queue, celery.step_timeout, run_steps
            )

        yield from core_celery_execution_loop(
            plan_context, execution_plan, step_execution_fn=submit
        )

    def decide(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Execution:
        if self._mode == IN_PROCESS:
            return Execution(IN_PROCESS, None, None, "as the run config asks")
        partition = run_tag(plan_context, PARTITION_TAG)
        ingests = partition is not None and any(
            key.startswith(INGEST_STEP_PREFIX) for key in execution_plan.step_keys_to_execute
        )
        # (The key's suffix is never percent-encoded: the partition key says it as well.)
        compression = compression_of(partition) if ingests else None
        if self._mode == MULTIPROCESS:
            size = object_size(plan_context, partition) if ingests else None
            return choose_execution(
                size,
                _chunk_bytes(plan_context),
                self._max_concurrent,
                True,
                compression=compression,
            )
        if not ingests:
            return Execution(IN_PROCESS, None, None, "the run ingests no object")
        if not self._can_fork:
            return Execution(IN_PROCESS, None, None, "no code location to fork steps from")
        size = object_size(plan_context, partition)
        return choose_execution(
            size, _chunk_bytes(plan_context), self._max_concurrent, compression=compression
        )


def object_size(plan_context: PlanOrchestrationContext, partition: str | None) -> int | None:
    """The size of the object the run ingests: the sensor's tag, else a HEAD of the bucket
    the run's resources point at. None when it cannot be read: the plan step then reports
    why (a missing object, an unreachable bucket) with its own retries."""
    tagged = run_tag(plan_context, OBJECT_SIZE_TAG)
    if tagged is not None and tagged.isdigit():
        return int(tagged)
    if partition is None:
        return None
    try:
        with _resources(plan_context, "bucket") as resources:
            return resources.bucket.open().head(object_key_for(partition)).size
    except Exception as error:  # noqa: BLE001 - decided without it, and said so
        plan_context.log.warning(
            f"catalog_executor: could not read the size of {partition!r} "
            f"({root_cause(error)}); running in process"
        )
        return None


def run_tag(plan_context: PlanOrchestrationContext, name: str) -> str | None:
    """A tag of the run, else of the run it re-executes (a re-execution launched through
    the Python API carries no tags of its own: the partition is its parent's)."""
    run = plan_context.dagster_run
    for run_id in (None, run.parent_run_id, run.root_run_id):
        source = run if run_id is None else plan_context.instance.get_run_by_id(run_id)
        if source is not None and name in source.tags:
            return source.tags[name]
    return None


def _chunk_bytes(plan_context: PlanOrchestrationContext) -> int:
    with _resources(plan_context, "ingest_settings") as resources:
        return resources.ingest_settings.chunk_bytes


def _resources(plan_context: PlanOrchestrationContext, name: str):
    """One of the job's resources, configured as the run configures it."""
    definition = plan_context.job.get_definition().resource_defs[name]
    config = (plan_context.run_config.get("resources") or {}).get(name, {})
    return dg.build_resources(
        {name: definition},
        instance=plan_context.instance,
        resource_config={name: config} if config else None,
    )
