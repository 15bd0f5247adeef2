"""What the fork server of a multiprocess run imports once, so each chunk step it forks
starts warm: the code location with its jobs resolved, both database drivers and the
migration head.

Measured per step without it: resolving a job from `Definitions` about 0.1 s, the first
`create_engine` (importing the dialect and psycopg) about 0.07 s, and reading the Alembic
scripts to check the schema.
"""

from sqlalchemy import create_engine

from catalog_pipeline.db.engine import head_revision
from catalog_pipeline.definitions import defs

for job in defs.jobs or ():
    defs.resolve_job_def(job.name)
for url in ("postgresql+psycopg://", "sqlite://"):
    create_engine(url).dispose()  # imports the dialect and its driver; connects nowhere
head_revision()
