"""`pool_limits_sensor`: gives the pools that need a specific limit that limit on any
instance where no operator has set one.

Dagster's `dagster.yaml` only has a default limit for every pool (`concurrency.pools.
default_limit`, 2 locally); a named pool's own limit lives in the instance's storage and is
set with `dagster instance concurrency set` or the UI. Production sets them explicitly
(deploy/set-pools.sh); this sensor makes a fresh local instance (`dagster dev`, even with a
throwaway DAGSTER_HOME) safe too. It only replaces limits that come from the default, never
one an operator set.
"""

import dagster as dg

# `classifier`, `embedder`: two runs must never call the same model at once.
# `stats_provider`: one drain at a time spends the provider quota in rank order.
POOL_LIMITS = {"classifier": 1, "embedder": 1, "stats_provider": 1}


def ensure_pool_limits(instance: dg.DagsterInstance, limits: dict[str, int]) -> dict[str, int]:
    """Set each pool that has no explicit limit to its limit; returns what was set."""
    storage = instance.event_log_storage
    current = {pool.name: pool for pool in storage.get_pool_limits()}
    changed = {}
    for name, limit in limits.items():
        pool = current.get(name)
        if pool is None or (pool.from_default and pool.limit != limit):
            storage.set_concurrency_slots(name, limit)
            changed[name] = limit
    return changed


@dg.sensor(
    name="pool_limits_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=60,
    description="Sets pool limits the code needs (classifier: 1, embedder: 1, "
    "stats_provider: 1) where "
    "no operator set one.",
)
def pool_limits_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    changed = ensure_pool_limits(context.instance, POOL_LIMITS)
    for name, limit in changed.items():
        context.log.info(f"pool {name!r}: limit set to {limit}")
    if changed:
        return dg.SkipReason(
            "set " + ", ".join(f"{name}={limit}" for name, limit in changed.items())
        )
    return dg.SkipReason("pool limits already set")
