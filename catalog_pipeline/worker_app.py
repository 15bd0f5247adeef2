"""The Celery app of `catalog-pipeline worker` (`celery -A catalog_pipeline.worker_app`):
dagster-celery's step task on the settings `catalog_executor` submits with, and a log line
per step, so a worker's own log says which steps of which run it executed."""

from __future__ import annotations

import logging
import time

from celery.signals import task_postrun, task_prerun

# The pool processes fork from this one: with the code location, drivers and instance
# classes imported here once, no step pays for them (as chunk steps forked by
# catalog_executor do not).
from catalog_pipeline import preload  # noqa: F401
from catalog_pipeline.workers import make_worker_app

app = make_worker_app()
log = logging.getLogger("catalog_pipeline.worker")
# One line when a step starts and one when it ends (below) say what a worker did. Celery's
# own line per finished task quotes its whole return value (the step's serialized
# events), and each step opening a SQLite instance logs Alembic's two lines: both go.
logging.getLogger("celery.app.trace").setLevel(logging.WARNING)
logging.getLogger("alembic").setLevel(logging.WARNING)
_started: dict[str, float] = {}


def _describe(kwargs: dict) -> str:
    from dagster._grpc.types import ExecuteStepArgs
    from dagster._serdes import unpack_value

    try:
        args = unpack_value(kwargs["execute_step_args_packed"], as_type=ExecuteStepArgs)
    except Exception:  # noqa: BLE001 - a log line must never fail a step
        return "a task"
    return f"step {', '.join(args.step_keys_to_execute or [])} of run {args.run_id}"


@task_prerun.connect
def _step_started(task_id=None, kwargs=None, **_) -> None:
    _started[task_id] = time.monotonic()
    log.info("running %s", _describe(kwargs or {}))


@task_postrun.connect
def _step_ended(task_id=None, kwargs=None, state=None, **_) -> None:
    seconds = time.monotonic() - _started.pop(task_id, time.monotonic())
    log.info("%s: %s in %.1f s", _describe(kwargs or {}), (state or "done").lower(), seconds)
