"""The failure taxonomy and the retry rule, on the errors the libraries really raise."""

from __future__ import annotations

import socket
import time
import urllib.error

import psycopg
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from sqlalchemy import text
from sqlalchemy.engine import make_url

from catalog_pipeline.core.bucket import ObjectMissingError
from catalog_pipeline.core.errors import (
    ChunkError,
    HeaderError,
    ObjectChangedError,
    RetriesExhaustedError,
    is_configuration_error,
    is_transient,
    root_cause,
)
from catalog_pipeline.core.retry import RetryPolicy, retrying
from catalog_pipeline.db.engine import make_engine


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _raised(call) -> BaseException:
    with pytest.raises(Exception) as caught:
        call()
    return caught.value


def _s3_error(status: int, code: str) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")


def test_a_refused_database_connection_is_transient_and_its_cause_is_named():
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/postgres")
    error = _raised(engine.connect)
    assert is_transient(error)
    assert root_cause(error).startswith("OperationalError: connection failed")
    # Wrapped by us, with our location, it stays transient and keeps the cause's words.
    try:
        raise ChunkError("k.csv", 3, 100, root_cause(error)) from error
    except ChunkError as wrapped:
        assert is_transient(wrapped)
        assert root_cause(wrapped).startswith("k.csv: chunk 3 at byte 100: OperationalError")


def _connect_error(url: str) -> BaseException:
    engine = make_engine(url)
    try:
        return _raised(engine.connect)
    finally:
        engine.dispose()


def test_an_unknown_database_is_permanent_a_configuration_error(postgres_admin_url):
    url = make_url(postgres_admin_url).set(database="no_such_db_xyz")
    error = _connect_error(url.render_as_string(hide_password=False))
    assert 'database "no_such_db_xyz" does not exist' in root_cause(error)  # the server's FATAL
    assert not is_transient(error)
    assert is_configuration_error(error)


def test_an_unknown_role_is_permanent_a_configuration_error(postgres_admin_url):
    url = make_url(postgres_admin_url).set(username="no_such_role")
    error = _connect_error(url.render_as_string(hide_password=False))
    assert 'role "no_such_role" does not exist' in root_cause(error)
    assert not is_transient(error)
    assert is_configuration_error(error)


def test_a_host_name_that_does_not_resolve_is_permanent():
    error = _connect_error("postgresql+psycopg://postgres@nonexistent.invalid:5432/postgres")
    message = root_cause(error)
    assert "nonexistent.invalid" in message
    if "temporary failure in name resolution" in message.lower():
        # This machine's resolver itself is failing (no DNS here): that may pass.
        assert is_transient(error) and not is_configuration_error(error)
    else:
        assert not is_transient(error)
        assert is_configuration_error(error)


@pytest.mark.parametrize(
    ("message", "transient"),
    [
        # libpq's and other platforms' words, which this machine's server and resolver
        # do not produce (the test server trusts every local user).
        ('FATAL:  password authentication failed for user "app"', False),
        ('FATAL:  no pg_hba.conf entry for host "10.0.0.7", user "app", database "db"', False),
        (
            'could not translate host name "db.internal" to address: Name or service not known',
            False,
        ),
        ("failed to resolve host 'db': [Errno 8] nodename nor servname provided", False),
        ("fe_sendauth: no password supplied", False),
        (
            'Could not translate host name "db" to address: Temporary failure in name resolution',
            True,
        ),
        ("server closed the connection unexpectedly", True),
        ("consuming input failed: Connection reset by peer", True),
        ("connection timeout expired", True),
        ("FATAL:  the database system is starting up", True),
    ],
)
def test_connection_errors_without_sqlstate_are_sorted_by_their_words(message, transient):
    error = psycopg.OperationalError(message)
    assert error.sqlstate is None
    assert is_transient(error) is transient
    assert is_configuration_error(error) is not transient


def test_a_connection_attempt_that_hangs_is_bounded_and_transient():
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        started = time.monotonic()
        error = _connect_error(
            f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres?connect_timeout=2"
        )
        assert time.monotonic() - started < 8
    assert is_transient(error)
    assert "timeout" in root_cause(error).lower()


def test_postgres_connections_have_a_connect_timeout_and_tcp_keepalives(postgres_admin_url):
    engine = make_engine(postgres_admin_url)
    with engine.connect() as connection:
        parameters = connection.connection.dbapi_connection.info.get_parameters()
    engine.dispose()
    assert parameters["connect_timeout"] == "10"
    assert parameters["keepalives"] == "1"
    assert parameters["keepalives_idle"] == "30"
    assert parameters["keepalives_interval"] == "10"
    assert parameters["keepalives_count"] == "3"


def test_a_constraint_violation_is_permanent(postgres_engine):
    with postgres_engine.begin() as connection:
        connection.execute(text("CREATE TEMP TABLE t (x int PRIMARY KEY)"))
        connection.execute(text("INSERT INTO t VALUES (1)"))
        error = _raised(lambda: connection.execute(text("INSERT INTO t VALUES (1)")))
    assert not is_transient(error)
    assert root_cause(error).startswith("UniqueViolation: duplicate key")


def test_a_deadlock_sqlstate_is_transient(postgres_engine):
    with postgres_engine.begin() as connection:
        error = _raised(
            lambda: connection.execute(
                text("DO $$ BEGIN RAISE EXCEPTION 'simulated' USING ERRCODE = '40P01'; END $$")
            )
        )
    assert is_transient(error)


def test_a_write_to_a_read_only_server_is_transient(postgres_engine):
    # What a write meets on a standby during a failover: SQLSTATE 25006.
    with postgres_engine.begin() as connection:
        connection.execute(text("SET TRANSACTION READ ONLY"))
        error = _raised(lambda: connection.execute(text("CREATE TEMP TABLE t (x int)")))
    assert getattr(error.orig, "sqlstate", None) == "25006"
    assert is_transient(error)


@pytest.mark.parametrize(
    ("status", "code", "transient"),
    [
        (503, "SlowDown", True),
        (500, "InternalError", True),
        (429, "TooManyRequests", True),
        (400, "RequestTimeout", True),
        (403, "AccessDenied", False),
        (404, "NoSuchBucket", False),
        (400, "InvalidArgument", False),
    ],
)
def test_s3_answers_are_sorted_by_status_and_code(status, code, transient):
    assert is_transient(_s3_error(status, code)) is transient


def test_connection_level_failures_are_transient():
    assert is_transient(EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert is_transient(ConnectionResetError("reset by peer"))
    assert is_transient(TimeoutError("timed out"))
    assert is_transient(urllib.error.URLError(ConnectionRefusedError("refused")))
    for status, transient in ((429, True), (502, True), (408, True), (404, False), (401, False)):
        error = urllib.error.HTTPError("http://x", status, "status", {}, None)
        assert is_transient(error) is transient


def test_our_permanent_errors_are_permanent_whatever_their_cause():
    assert not is_transient(ObjectChangedError("k.csv", "abc"))
    assert not is_transient(HeaderError("k.csv: empty object"))
    assert not is_transient(ObjectMissingError("file:///b", "k.csv"))
    try:
        raise HeaderError("k.csv: header unreadable") from ConnectionResetError()
    except HeaderError as error:
        assert not is_transient(error)
    assert not is_transient(ValueError("a bug of ours"))


class _Flaky:
    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


class _FakeClock:
    """Time that moves only when the retry loop sleeps, so budgets are exact."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_transient_failures_are_retried_with_growing_jittered_waits():
    clock = _FakeClock()
    flaky = _Flaky(6, ConnectionResetError("reset"))
    policy = RetryPolicy(budget_seconds=300, first_delay=1, max_delay=8)
    assert retrying(flaky, "read", policy, sleep=clock.sleep, clock=lambda: clock.now) == "done"
    assert flaky.calls == 7
    ceilings = [1, 2, 4, 8, 8, 8]
    assert all(c / 2 <= wait <= c for wait, c in zip(clock.waits, ceilings, strict=True))


def test_permanent_failures_are_not_retried():
    flaky = _Flaky(1, ValueError("bad data"))
    with pytest.raises(ValueError):
        retrying(flaky, "write", RetryPolicy(budget_seconds=300), sleep=lambda _: None)
    assert flaky.calls == 1


def test_the_budget_bounds_the_retries_and_names_the_root_cause():
    clock = _FakeClock()
    flaky = _Flaky(10_000, ConnectionRefusedError("refused"))
    policy = RetryPolicy(budget_seconds=60, first_delay=1, max_delay=8)
    with pytest.raises(RetriesExhaustedError) as caught:
        retrying(flaky, "k.csv: write", policy, sleep=clock.sleep, clock=lambda: clock.now)
    assert clock.now <= 60
    assert clock.now > 60 - 8  # it did use the budget
    message = str(caught.value)
    assert message.startswith("k.csv: write: ConnectionRefusedError: refused (transient;")
    assert not is_transient(caught.value)  # the step fails now instead of retrying again
    assert root_cause(caught.value) == message


def test_the_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("CATALOG_RETRY_BUDGET_S", "42")
    assert RetryPolicy.from_environment().budget_seconds == 42
    monkeypatch.setenv("CATALOG_RETRY_BUDGET_S", "five minutes")
    with pytest.raises(ValueError, match="CATALOG_RETRY_BUDGET_S"):
        RetryPolicy.from_environment()


def test_retried_retries_each_method_call_of_its_target():
    from catalog_pipeline.core.retry import Retried

    class Queue:
        def __init__(self) -> None:
            self.claims = 0
            self.name = "queue"

        def claim(self, limit: int) -> int:
            self.claims += 1
            if self.claims < 3:
                raise ConnectionResetError("reset")
            return limit

        def record(self) -> None:
            raise ValueError("a bug")

    queue = Queue()
    retried = Retried(
        queue, "queue", RetryPolicy(budget_seconds=5, first_delay=0.01, max_delay=0.02)
    )
    assert retried.claim(7) == 7 and queue.claims == 3
    assert retried.name == "queue"  # attributes pass through
    with pytest.raises(ValueError):
        retried.record()
