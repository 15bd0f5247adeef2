"""`CatalogIOManager`: step outputs in the catalog database, for runs whose steps run on
Celery workers on several machines.

Dagster's default `fs_io_manager` pickles outputs under `$DAGSTER_HOME/storage` on the
machine that ran the step; a chunk step on another worker machine would not find the
plan. The catalog database is what every worker reaches already, so the outputs go
there (`step_outputs`, one row per run and output, written idempotently: a redelivered
step overwrites its own row). The outputs are small: a plan of byte ranges, one report per
chunk. A re-execution from failure reads its parent run's outputs, as Dagster asks.
"""

from __future__ import annotations

import pickle

import dagster as dg

from catalog_pipeline.db.step_outputs import load_output, store_output
from catalog_pipeline.resources.catalog import CatalogDatabase


def output_key(step_key: str, name: str, mapping_key: str | None) -> str:
    return f"{step_key}/{name}" + (f"[{mapping_key}]" if mapping_key is not None else "")


class CatalogIOManager(dg.ConfigurableIOManager):
    """Pickled step outputs in the catalog database's `step_outputs`."""

    catalog_db: CatalogDatabase

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if context.dagster_type.is_nothing:
            return
        key = output_key(context.step_key, context.name, context.mapping_key)
        store_output(self.catalog_db.engine(), context.run_id, key, pickle.dumps(obj))

    def load_input(self, context: dg.InputContext):
        if context.dagster_type.is_nothing:
            return None
        upstream = context.upstream_output
        key = output_key(upstream.step_key, upstream.name, upstream.mapping_key)
        value = load_output(self.catalog_db.engine(), upstream.run_id, key)
        if value is None:
            raise dg.DagsterInvariantViolationError(
                f"no stored output {key!r} of run {upstream.run_id} in the catalog database's "
                "step_outputs (deleted by retention after 30 days, or the run never produced it)"
            )
        return pickle.loads(value)
