"""The local launcher's health check: a run whose recorded worker process is gone is
FAILED for run monitoring; a live one, or a run without a recorded worker, is RUNNING."""

from __future__ import annotations

import contextlib
import subprocess

import dagster as dg
from dagster._core.events import EngineEventData
from dagster._core.launcher.base import WorkerStatus

from catalog_pipeline.run_launcher import LocalRunLauncher


@dg.op
def noop() -> None:
    pass


@dg.job
def tiny_job() -> None:
    noop()


def test_a_dead_run_worker_is_reported_failed_and_a_live_one_running():
    launcher_config = {
        "run_launcher": {"module": "catalog_pipeline.run_launcher", "class": "LocalRunLauncher"}
    }
    with dg.instance_for_test(overrides=launcher_config) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, LocalRunLauncher) and launcher.supports_check_run_worker_health
        run = instance.create_run_for_job(tiny_job)
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING  # no pid

        worker = subprocess.Popen(["sleep", "60"])
        instance.report_engine_event(
            f"Started process for run (pid: {worker.pid}).",
            run,
            EngineEventData.in_process(worker.pid),
        )
        assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
        worker.kill()
        worker.wait()
        result = launcher.check_run_worker_health(run)
        assert result.status == WorkerStatus.FAILED
        assert str(worker.pid) in result.msg and "gone" in result.msg


def test_the_first_launch_sets_the_pool_limits_the_code_needs():
    """A run launched on a fresh instance before `pool_limits_sensor` first ticked must
    already find `classifier` (and the others) at their limits, not the default."""
    from dagster._core.launcher import LaunchRunContext

    from catalog_pipeline.sensors.pools import POOL_LIMITS

    launcher_config = {
        "run_launcher": {"module": "catalog_pipeline.run_launcher", "class": "LocalRunLauncher"}
    }
    with dg.instance_for_test(overrides=launcher_config) as instance:
        storage = instance.event_log_storage
        assert not {pool.name for pool in storage.get_pool_limits()} & set(POOL_LIMITS)
        run = instance.create_run_for_job(tiny_job)
        # No code location to launch into here: the limits come first regardless.
        with contextlib.suppress(Exception):
            instance.run_launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
        limits = {pool.name: pool.limit for pool in storage.get_pool_limits()}
        assert {name: limits.get(name) for name in POOL_LIMITS} == POOL_LIMITS
