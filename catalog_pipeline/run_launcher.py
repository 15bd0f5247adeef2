"""The local instance's run launcher: Dagster's default one, plus the health check that
lets run monitoring fail a run whose worker process died without a word (SIGKILL, the
kernel's OOM killer), so that the run-failure sensor marks its file `failed`.

Dagster's default launcher runs each run in a process of the code server on this machine
and cannot tell whether it is still alive; the Kubernetes and Docker launchers (the
production choice) check their own workers. This one reads the run worker's process id
from the run's "Started process for run (pid: N)" event and asks the kernel. Before its
first run it also sets the pool limits the code needs (see `launch_run`).
"""

from __future__ import annotations

from dagster import DagsterEventType, DagsterRun
from dagster._core.launcher import DefaultRunLauncher
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus

from catalog_pipeline.core.processes import process_alive
from catalog_pipeline.sensors.pools import POOL_LIMITS, ensure_pool_limits


class LocalRunLauncher(DefaultRunLauncher):
    _pools_checked = False

    def launch_run(self, context) -> None:
        """Before the first run it launches, give the pools that need a limit theirs
        (`pool_limits_sensor` does it too, but on a fresh instance a run launched before
        that sensor's first tick ran two classifier steps at once under the default
        limit)."""
        if not self._pools_checked:
            ensure_pool_limits(self._instance, POOL_LIMITS)
            self._pools_checked = True
        super().launch_run(context)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        pid = run_worker_pid(self._instance, run.run_id)
        if pid is None:
            # Not launched by this launcher (an in-process run of `catalog-pipeline` on the
            # same instance): nothing to check. (UNKNOWN would make monitoring fail it.)
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no run worker process recorded")
        if process_alive(pid):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"the run worker process {pid} is gone without reporting an end "
            "(killed, or out of memory)",
        )


def run_worker_pid(instance, run_id: str) -> int | None:
    """The process id the run worker reported when it started (its latest, after a resume)."""
    pid = None
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.engine_event_data
        message = entry.dagster_event.message or ""
        if data and "pid" in data.metadata and message.startswith("Started process for run"):
            pid = int(data.metadata["pid"].value)
    return pid
