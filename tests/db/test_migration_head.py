"""A migrated database stands at the newest revision of the Alembic scripts."""

from __future__ import annotations

import re

from alembic.script import ScriptDirectory

from catalog_pipeline.db.engine import MIGRATIONS, current_revision, upgrade


def test_a_fresh_database_is_at_the_scripts_head_and_an_upgrade_keeps_it_there(engine):
    scripts = ScriptDirectory(str(MIGRATIONS))
    head = scripts.get_current_head()
    # The head is the newest of the version files, whose names start with their revision.
    numbered = [
        match[1]
        for path in (MIGRATIONS / "versions").glob("*.py")
        if (match := re.match(r"(\d{4})_", path.name))
    ]
    assert head == max(numbered)
    assert current_revision(engine) == head  # the fixture ran `upgrade` on an empty database
    upgrade(engine)
    assert current_revision(engine) == head
