"""Celery workers: the steps of ingest runs, and the runs of many files, spread over
machines on Dagster's own Celery engine (`dagster-celery`, Redis as broker and result
backend). `CATALOG_EXECUTOR=celery` makes `catalog_executor` submit every step of every
run to the queues below, whatever launched the run; `catalog-pipeline worker` starts a
worker with the same settings, so nobody writes the Celery yaml by hand.

Settings chosen so that a killed worker never leaves a run hanging:
- `task_acks_late` and `task_reject_on_worker_lost`: a step is acknowledged when it ends,
  not when a worker takes it, so the step of a worker killed mid-step (SIGKILL, OOM, a
  drained node) goes back to the queue: Redis hands it to another worker after the
  visibility timeout, and a pool child that dies is requeued at once (without this, Celery
  marks the task failed with `WorkerLostError`, which no op `RetryPolicy` sees);
- `worker_prefetch_multiplier` 1: a worker reserves one step beyond those it runs, so a
  killed worker strands at most that one, and it is redelivered the same way;
- a visibility timeout (`CATALOG_CELERY_VISIBILITY_TIMEOUT_SECONDS`, 900 s): how long a
  taken step may go unacknowledged before Redis redelivers it. A step that runs longer is
  started a second time while the first still runs; chunk upserts, invalid-row logs and
  finalize are idempotent, so the catalog ends the same (tested), at the cost of the work;
- a step deadline (`CATALOG_CELERY_STEP_TIMEOUT_SECONDS`, 3,600 s from the step's start on
  a worker): a step redelivered again and again (a worker that dies on it each time) ends
  as a failed step with that reason instead of a run that never ends, and the run's
  failure marks the file `failed` like any other. Time waiting in a queue for a free
  worker does not count, but a step no worker has started is reported in the run log
  every `STARTUP_WARNING_SECONDS`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from catalog_pipeline.core.alerts import redact_secrets
from catalog_pipeline.settings import number_setting, setting

EXECUTOR = "CATALOG_EXECUTOR"
BROKER_URL = "CATALOG_CELERY_BROKER_URL"
BACKEND_URL = "CATALOG_CELERY_BACKEND_URL"
VISIBILITY_TIMEOUT = "CATALOG_CELERY_VISIBILITY_TIMEOUT_SECONDS"
STEP_TIMEOUT = "CATALOG_CELERY_STEP_TIMEOUT_SECONDS"
DEFAULT_VISIBILITY_TIMEOUT = 900
DEFAULT_STEP_TIMEOUT = 3600
STARTUP_WARNING_SECONDS = 300

QUEUE_TAG = "dagster-celery/queue"  # dagster_celery.tags.DAGSTER_CELERY_QUEUE_TAG
INGEST_QUEUE = "ingest"  # plan, chunk and finalize steps of catalog_ingest_job
DERIVED_QUEUE = "derived"  # classification, embeddings, playcount: slow providers
DEFAULT_QUEUE = "dagster"  # everything else (retention, quality)
QUEUES = (INGEST_QUEUE, DERIVED_QUEUE, DEFAULT_QUEUE)
INGEST_TAGS = {QUEUE_TAG: INGEST_QUEUE}
DERIVED_TAGS = {QUEUE_TAG: DERIVED_QUEUE}

EXECUTORS = ("auto", "celery")


class CelerySettingsError(ValueError):
    """A Celery setting that cannot work: named, with what to set instead."""


def executor_choice() -> str:
    """`CATALOG_EXECUTOR`: `auto` (default: in process or forked chunk steps, see
    catalog_pipeline.executor) or `celery`."""
    value = (setting(EXECUTOR) or "auto").strip().lower()
    if value not in EXECUTORS:
        raise CelerySettingsError(
            f"{EXECUTOR}={value!r}: use one of {', '.join(EXECUTORS)} (default auto)"
        )
    return value


def _seconds(name: str, default: int) -> int:
    return number_setting(
        name,
        default,
        int,
        "give a whole number of seconds",
        (lambda value: value >= 1, "give at least 1 second"),
        CelerySettingsError,
    )


@dataclass(frozen=True, slots=True)
class CelerySettings:
    broker_url: str
    backend_url: str
    visibility_timeout: int
    step_timeout: int

    @classmethod
    def from_environment(cls) -> CelerySettings:
        try:
            import dagster_celery  # noqa: F401
            import redis  # noqa: F401
        except ImportError as error:
            raise CelerySettingsError(
                f"{EXECUTOR}=celery needs dagster-celery and redis ({error}): "
                "pip install 'catalog_pipeline[celery]'"
            ) from None
        broker = setting(BROKER_URL)
        if not broker:
            raise CelerySettingsError(
                f"{EXECUTOR}=celery needs {BROKER_URL} (e.g. redis://localhost:6379/0), the "
                "broker the workers (`catalog-pipeline worker`) listen to"
            )
        return cls(
            broker_url=broker,
            backend_url=setting(BACKEND_URL) or broker,
            visibility_timeout=_seconds(VISIBILITY_TIMEOUT, DEFAULT_VISIBILITY_TIMEOUT),
            step_timeout=_seconds(STEP_TIMEOUT, DEFAULT_STEP_TIMEOUT),
        )

    def config_source(self) -> dict:
        """The Celery settings the executor and every worker share."""
        transport = {
            "visibility_timeout": self.visibility_timeout,
            # Workers sweep for steps past the timeout every `unacked_restore_interval` s
            # times `unacked_restore_throttle` (kombu: 10 x 10, so a stranded step waited
            # up to 100 s more): every few seconds, one cheap sorted-set range each.
            "unacked_restore_interval": max(1, min(10, self.visibility_timeout // 4)),
            "unacked_restore_throttle": 1,
        }
        return {
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "task_track_started": True,  # the step deadline runs from a worker's start
            "worker_prefetch_multiplier": 1,
            "task_default_queue": DEFAULT_QUEUE,
            "task_default_priority": 5,
            "broker_transport_options": {
                **transport,
                "max_retries": 3,
                "interval_start": 0,
                "interval_step": 0.2,
                "interval_max": 0.5,
            },
            "result_backend_transport_options": transport,
            "broker_connection_retry_on_startup": True,
            "result_expires": 7 * 24 * 3600,
        }

    def app_args(self, retries) -> dict:
        """What `dagster_celery.make_app.make_app` builds the Celery app from."""
        from dagster_celery.config import dict_wrapper

        return {
            "broker": self.broker_url,
            "backend": self.backend_url,
            "include": [],
            "config_source": dict_wrapper(self.config_source()),
            "retries": retries,
        }


def check_broker(url: str, timeout: float = 5.0) -> None:
    """A clear error now, rather than a worker retrying a broker it cannot reach."""
    if not url.startswith(("redis://", "rediss://")):
        return
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout).ping()
    except redis.RedisError as error:
        raise CelerySettingsError(
            redact_secrets(f"cannot reach the Celery broker {url} ({BROKER_URL}): {error}")
        ) from None


def make_worker_app():
    """The Celery app a worker runs (`celery -A catalog_pipeline.worker_app`): the
    executor's settings and dagster-celery's step task."""
    from dagster._core.execution.retries import RetryMode
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    app = make_app(CelerySettings.from_environment().app_args(RetryMode(RetryMode.DISABLED)))
    create_task(app)
    return app


class RunSteps:
    """The steps one run submitted, so that when one of them misses its deadline the
    others stop being waited on: the run's failure then names that step."""

    def __init__(self) -> None:
        self.timed_out: str | None = None


class StepDeadline:
    """A submitted step's Celery result, with the deadline that keeps a run from waiting
    forever on a step that never finishes. dagster-celery's execution loop polls
    `ready()` and then takes the step's events from `get()`; past the deadline `ready()`
    says yes and `get()` revokes the task and returns the step's failure event, with the
    reason, so the run fails the way it does when a step fails (downstream steps skipped,
    the file marked `failed`, the failure alert). Once a step of the run timed out, the
    run's other unfinished steps (queued behind it, perhaps never to be started) are
    revoked and failed the same way.
    """

    def __init__(self, result, step_context, queue: str, timeout: int, run: RunSteps) -> None:
        self._result = result
        self._context = step_context
        self._step_key = step_context.step.key
        self._queue = queue
        self._timeout = timeout
        self._run = run
        self._submitted = time.monotonic()
        self._started: float | None = None
        self._warned_at = self._submitted

    def _expired(self) -> bool:
        now = time.monotonic()
        if self._started is None:
            if self._result.state in ("STARTED", "RETRY"):
                self._started = now
            elif now - self._warned_at >= STARTUP_WARNING_SECONDS:
                self._warned_at = now
                self._context.log.warning(
                    f"step {self._step_key} has waited {now - self._submitted:.0f} s in Celery "
                    f"queue {self._queue!r} without a worker starting it: is a worker "
                    f"(`catalog-pipeline worker --queue {self._queue}`) running?"
                )
        return self._started is not None and now - self._started > self._timeout

    def ready(self) -> bool:
        return self._result.ready() or self._run.timed_out is not None or self._expired()

    def get(self) -> list:
        if self._result.ready():
            return self._result.get()
        self._result.revoke()
        if self._run.timed_out is not None and self._run.timed_out != self._step_key:
            reason = f"revoked: step {self._run.timed_out} of the same run timed out"
        else:
            self._run.timed_out = self._step_key
            reason = (
                f"step {self._step_key} did not finish within {STEP_TIMEOUT}={self._timeout} s "
                "of a Celery worker starting it (a worker killed again and again on it, or "
                "a step longer than the deadline); revoked"
            )
        return [serialized_step_failure(self._context, reason)]

    def revoke(self) -> None:
        self._result.revoke()


def serialized_step_failure(step_context, reason: str):
    """A step's failure event with `reason`, serialized as a Celery step task returns it."""
    from dagster import DagsterEvent
    from dagster._core.execution.plan.objects import ErrorSource, StepFailureData, UserFailureData
    from dagster._serdes import serialize_value
    from dagster._utils.error import SerializableErrorInfo

    error = SerializableErrorInfo(
        message=f"StepTimedOut: {reason}", stack=[], cls_name="StepTimedOut"
    )
    data = StepFailureData(
        error=error,
        user_failure_data=UserFailureData(label="step_timeout", description=reason, metadata={}),
        error_source=ErrorSource.FRAMEWORK_ERROR,
    )
    return serialize_value(DagsterEvent.step_failure_event(step_context, data))
