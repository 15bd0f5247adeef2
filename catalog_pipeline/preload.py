"""What the fork server of a multiprocess run imports once, so each chunk step it forks
starts warm: the code location with its jobs resolved, both database drivers, the
migration head, and the classes a step rebuilds its Dagster instance from. It also turns
transparent huge pages off for the steps (see core.memory).

Measured per step without it: resolving a job from `Definitions` about 0.1 s, the first
`create_engine` (importing the dialect and psycopg) about 0.07 s, reading the Alembic
scripts to check the schema, and importing the instance's storage, compute-log and
launcher classes (about 280 modules) 0.19 s.
"""

import importlib
import os
import tempfile

from sqlalchemy import create_engine
from upath import UPath

from catalog_pipeline.core.memory import without_transparent_hugepages
from catalog_pipeline.db.engine import head_revision
from catalog_pipeline.definitions import defs


def _instance_class_modules() -> set[str]:
    """The modules of the classes a step process builds its instance from: those its
    `dagster.yaml` (in DAGSTER_HOME) names, else Dagster's defaults. Only the names are
    read; nothing is created, so no step inherits an open connection or file."""
    from dagster._core.instance.ref import InstanceRef  # no public way to read a ref

    home = os.environ.get("DAGSTER_HOME")
    if home:
        ref = InstanceRef.from_dir(home)
    else:
        with tempfile.TemporaryDirectory() as empty:
            ref = InstanceRef.from_dir(empty)
    return {
        value.module_name
        for value in (getattr(ref, name) for name in dir(ref) if name.endswith("_data"))
        if isinstance(getattr(value, "module_name", None), str)
    }


for job in defs.jobs or ():
    defs.resolve_job_def(job.name)
for url in ("postgresql+psycopg://", "sqlite://"):
    create_engine(url).dispose()  # imports the dialect and its driver; connects nowhere
head_revision()
try:
    for module in _instance_class_modules():
        importlib.import_module(module)
except Exception:  # noqa: BLE001 - a warm-up only: a step imports what it needs anyway
    pass
UPath(tempfile.gettempdir())  # the IO manager's path class loads its local implementation
without_transparent_hugepages()  # inherited by every step the server forks
