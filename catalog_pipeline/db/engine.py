"""Engines and migrations: one place that knows the database URL and the schema version."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_SQLITE_FILE = "catalog.sqlite"
# libpq connection settings for PostgreSQL (psycopg): a connection attempt that hangs
# gives up after 10 s, and TCP keepalives find a dead peer of an idle or waiting
# connection within about a minute (30 s idle, then 3 probes 10 s apart), instead of the
# operating system's hours. Both then fail as connection errors, transient, which the
# retry budget (`core.retry`) covers. A value the URL's query gives wins.
POSTGRES_CONNECT_ARGS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
# The PostgreSQL drivers on libpq's parameters (others name their options differently).
_LIBPQ_DRIVERS = ("psycopg", "psycopg2")


def dialect_insert(connection: Connection):
    """`insert` of the connection's dialect, the one with `on_conflict_do_…` (upserts)."""
    return postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert


def default_database_url() -> str:
    """SQLite in the Dagster instance folder (or `./data` without one): zero setup."""
    home = os.environ.get("DAGSTER_HOME")
    folder = Path(home) if home else Path("data")
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / DEFAULT_SQLITE_FILE).resolve()}"


def make_engine(url: str | None = None) -> Engine:
    """An engine for `url` (default: `CATALOG_DATABASE_URL`, else the embedded SQLite)."""
    url = url or os.environ.get("CATALOG_DATABASE_URL") or default_database_url()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 60})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
        url = parsed.render_as_string(hide_password=False)
    connect_args = {}
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in _LIBPQ_DRIVERS:
        connect_args = {
            name: value for name, value in POSTGRES_CONNECT_ARGS.items() if name not in parsed.query
        }
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to `revision`. Safe to call on every start: a no-op when current."""
    command.upgrade(alembic_config(engine), revision)


@functools.cache
def head_revision() -> str | None:
    """The newest migration of this code (read from the scripts once per process)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def ensure_current(engine: Engine) -> None:
    """Migrate unless the database is already at this code's head: one query when it is
    (the usual case in a step process), instead of Alembic's full environment run."""
    if current_revision(engine) != head_revision():
        upgrade(engine)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
