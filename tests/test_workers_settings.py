"""Celery settings, checked before anything starts: `CATALOG_EXECUTOR`, the broker, the
timeouts, and `catalog-pipeline worker` refusing what cannot work with a sentence (exit 2,
no traceback). Workers and runs on a real Redis: tests/test_celery_workers.py."""

from __future__ import annotations

import pytest

from catalog_pipeline import workers
from catalog_pipeline.core.alerts import redact_secrets
from catalog_pipeline.workers import CelerySettings, CelerySettingsError, executor_choice
from tests.conftest import _free_port
from tests.test_cli import cli

BROKER = "redis://127.0.0.1:6379/0"


@pytest.fixture
def clean_environment(monkeypatch):
    for name in (
        workers.EXECUTOR,
        workers.BROKER_URL,
        workers.BACKEND_URL,
        workers.VISIBILITY_TIMEOUT,
        workers.STEP_TIMEOUT,
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_executor_is_auto_unless_celery_is_asked_for(clean_environment):
    assert executor_choice() == "auto"
    clean_environment.setenv(workers.EXECUTOR, " Celery ")
    assert executor_choice() == "celery"
    clean_environment.setenv(workers.EXECUTOR, "k8s")
    with pytest.raises(
        CelerySettingsError, match=r"CATALOG_EXECUTOR='k8s': use one of auto, celery"
    ):
        executor_choice()


def test_celery_needs_a_broker_and_whole_positive_timeouts(clean_environment):
    with pytest.raises(CelerySettingsError, match="needs CATALOG_CELERY_BROKER_URL"):
        CelerySettings.from_environment()
    clean_environment.setenv(workers.BROKER_URL, BROKER)
    settings = CelerySettings.from_environment()
    assert (settings.backend_url, settings.visibility_timeout, settings.step_timeout) == (
        BROKER,
        900,
        3600,
    )
    clean_environment.setenv(workers.VISIBILITY_TIMEOUT, "soon")
    with pytest.raises(CelerySettingsError, match="='soon': give a whole number of seconds"):
        CelerySettings.from_environment()
    clean_environment.setenv(workers.VISIBILITY_TIMEOUT, "0")
    with pytest.raises(CelerySettingsError, match="give at least 1 second"):
        CelerySettings.from_environment()


def test_the_shared_celery_config_acks_late_and_sweeps_for_stranded_steps(clean_environment):
    clean_environment.setenv(workers.BROKER_URL, BROKER)
    clean_environment.setenv(workers.VISIBILITY_TIMEOUT, "120")
    config = CelerySettings.from_environment().config_source()
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1
    transport = config["broker_transport_options"]
    assert transport["visibility_timeout"] == 120
    # kombu's default sweep (10 s x 10) would strand a killed worker's step 100 s more.
    assert transport["unacked_restore_interval"] * transport["unacked_restore_throttle"] == 10


def test_broker_passwords_are_redacted_as_every_url_is():
    assert redact_secrets("redis://:s3cret@host:6380/0") == "redis://***@host:6380/0"
    assert redact_secrets("redis://host/0") == "redis://host/0"


def test_worker_without_a_broker_is_a_usage_error():
    result = cli("worker", env={workers.BROKER_URL: "", workers.EXECUTOR: "celery"})
    assert result.returncode == 2, result.stderr
    assert "needs CATALOG_CELERY_BROKER_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_with_an_unreachable_broker_says_so():
    url = f"redis://:hunter2@127.0.0.1:{_free_port()}/0"  # nothing listens there
    result = cli("worker", env={workers.BROKER_URL: url}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "cannot reach the Celery broker redis://***@127.0.0.1" in result.stderr
    assert "hunter2" not in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_options_are_checked():
    result = cli("worker", "--concurrency", "0", env={workers.BROKER_URL: BROKER})
    assert result.returncode == 2 and "--concurrency 0: give 1 or more" in result.stderr
    result = cli("worker", "--queue", "fast", env={workers.BROKER_URL: BROKER})
    assert result.returncode == 2 and "invalid choice: 'fast'" in result.stderr


def test_ingest_on_celery_without_a_reachable_broker_stops_before_any_file(tmp_path):
    url = f"redis://127.0.0.1:{_free_port()}/0"
    result = cli(
        "ingest",
        "--json",
        "--bucket",
        tmp_path.as_uri(),
        "--database-url",
        f"sqlite:///{tmp_path / 'catalog.sqlite'}",
        env={workers.EXECUTOR: "celery", workers.BROKER_URL: url, "DAGSTER_HOME": ""},
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert f"cannot reach the Celery broker {url}" in result.stderr
    assert "Traceback" not in result.stderr
