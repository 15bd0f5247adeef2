"""Schedules. Every one runs on UTC cron, is on by default, and is named after its job
(`x_job` → `x_schedule`): `utc_schedule` is that rule, once."""

import dagster as dg


def utc_schedule(job, cron: str) -> dg.ScheduleDefinition:
    """The schedule of `job` (an op job or an asset job) on a UTC `cron`, running by default."""
    return dg.ScheduleDefinition(
        name=job.name.removesuffix("_job") + "_schedule",
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
