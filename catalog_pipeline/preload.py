"""What the fork server of a multiprocess run imports once, so each chunk step it forks
starts warm: the code location, its jobs already resolved, the database driver and
the migration scripts already read.

Resolving a job from `Definitions` takes about 0.1 s and every forked step would
otherwise do it again; so would reading the Alembic scripts to check the schema.
"""

from catalog_pipeline.db.engine import head_revision
from catalog_pipeline.definitions import defs

for job in defs.jobs or ():
    defs.resolve_job_def(job.name)
head_revision()
