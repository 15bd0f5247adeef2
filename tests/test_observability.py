"""JSON log lines from real Dagster runs and from the pipeline's own loggers, and run
failures delivered to a real (local) Sentry endpoint."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest

from catalog_pipeline.core.alerts import RunFailureAlert
from catalog_pipeline.core.retry import RetryPolicy, retrying
from catalog_pipeline.observability import (
    LOG_FORMAT_SETTING,
    SENTRY_DSN_SETTING,
    init_sentry,
    json_console_logger,
    logger_run_config,
    loggers_from_environment,
    report_failure,
)

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "4f2b9c1e-7a3d-4e8f-9b0a-1c2d3e4f5a6b"


@dg.op(out=dg.DynamicOut(int))
def plan_chunks(context):
    context.log.info("planned 1 chunk")
    yield dg.DynamicOutput(3, mapping_key="chunk_00003")


@dg.op
def process_chunk(context, index: int) -> None:
    context.log.warning(
        "chunk %d: retrying", index, extra={"attempt": 2, "error_class": "OperationalError"}
    )
    raise ValueError(f"chunk {index}: price 'n/a' is not a number\nsecond line")


@dg.graph
def catalog_ingest() -> None:
    plan_chunks().map(process_chunk)


@dg.job(logger_defs={"console": json_console_logger})
def failing_ingest_job() -> None:
    catalog_ingest()


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_run_logs_are_one_json_object_per_line_with_run_step_chunk_and_partition(
    capsys, monkeypatch
):
    monkeypatch.setenv(LOG_FORMAT_SETTING, "json")
    result = failing_ingest_job.execute_in_process(
        run_config=logger_run_config(),
        tags={"dagster/partition": "scraper-a/items.csv"},
        raise_on_error=False,
    )
    assert not result.success

    lines = _json_lines(capsys.readouterr().err)  # every line parses, or this fails
    assert lines
    for line in lines:
        assert line["run_id"] == result.run_id
        assert line["job"] == "failing_ingest_job"
        assert line["logger"] == "dagster"
        assert line["ts"].endswith("+00:00")
        assert line["level"] != "DEBUG"  # the default threshold is INFO
        assert line["partition"] == "scraper-a/items.csv"

    planned = next(line for line in lines if line["message"] == "planned 1 chunk")
    assert planned["step"] == "catalog_ingest.plan_chunks"
    assert "chunk" not in planned

    retry = next(line for line in lines if line["message"] == "chunk 3: retrying")
    assert retry["level"] == "WARNING"
    assert retry["step"] == "catalog_ingest.process_chunk[chunk_00003]"
    assert retry["chunk"] == 3
    assert retry["attempt"] == 2
    assert retry["error_class"] == "OperationalError"

    failure = next(line for line in lines if line.get("event") == "STEP_FAILURE")
    assert failure["level"] == "ERROR"
    assert failure["chunk"] == 3
    assert failure["error_class"] == "ValueError"
    assert "price 'n/a' is not a number\nsecond line" in failure["exception"]
    assert "Stack Trace" in failure["exception"] or "File " in failure["exception"]
    assert "\n" not in failure["message"]


def test_the_json_logger_is_chosen_by_the_environment(monkeypatch):
    monkeypatch.delenv(LOG_FORMAT_SETTING, raising=False)
    assert loggers_from_environment() == {}
    assert logger_run_config() == {}
    monkeypatch.setenv(LOG_FORMAT_SETTING, "text")
    assert loggers_from_environment() == {}
    monkeypatch.setenv(LOG_FORMAT_SETTING, "JSON")
    assert loggers_from_environment() == {"console": json_console_logger}
    assert logger_run_config() == {"loggers": {"console": {}}}


@pytest.fixture
def json_python_logging(monkeypatch):
    """`configure_python_logging()` with JSON on; the package logger restored afterwards."""
    from catalog_pipeline.observability import configure_python_logging

    monkeypatch.setenv(LOG_FORMAT_SETTING, "json")
    package_logger = logging.getLogger("catalog_pipeline")
    handlers, level = list(package_logger.handlers), package_logger.level
    configure_python_logging()
    configure_python_logging()  # a second call adds nothing
    yield
    package_logger.handlers[:] = handlers
    package_logger.setLevel(level)


def test_the_retry_rule_logs_its_attempt_and_error_class_as_json(json_python_logging, capsys):
    failures = [ConnectionResetError("connection reset by peer")]

    def flaky() -> str:
        if failures:
            raise failures.pop()
        return "done"

    policy = RetryPolicy(budget_seconds=5, first_delay=0.01, max_delay=0.01)
    assert retrying(flaky, "reading chunk 3", policy) == "done"

    (line,) = _json_lines(capsys.readouterr().err)
    assert line["logger"] == "catalog_pipeline.retry"
    assert line["level"] == "WARNING"
    assert line["attempt"] == 1
    assert line["error_class"] == "ConnectionResetError"
    assert line["message"].startswith("reading chunk 3: transient failure (attempt 1)")


def test_an_exception_is_one_json_field_not_a_multiline_traceback(json_python_logging, capsys):
    log = logging.getLogger("catalog_pipeline.cli")
    try:
        raise KeyError("missing column 'price'")
    except KeyError:
        log.exception("ingest of %s failed", "scraper-a/items.csv", extra={"partition": "p1"})
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    (line,) = _json_lines(err)
    assert line["message"] == "ingest of scraper-a/items.csv failed"
    assert line["partition"] == "p1"
    assert line["error_class"] == "KeyError"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "missing column 'price'" in line["exception"]


class SentryReceiver:
    """A local stand-in for Sentry's ingest endpoint: records each envelope, decompressed.
    Other POSTs (a webhook's, say) are answered and their paths kept in `other_posts`."""

    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        self.other_posts: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path.startswith("/api/"):
                    receiver.envelopes.append(body)
                else:
                    receiver.other_posts.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.dsn = f"http://public@127.0.0.1:{self.server.server_address[1]}/1"

    def __enter__(self) -> SentryReceiver:
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[dict]:
        """The error events among the envelopes (an envelope is JSON lines: a header, then
        item headers each followed by its payload)."""
        found = []
        for envelope in self.envelopes:
            lines = envelope.split(b"\n")
            for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                if json.loads(header).get("type") == "event":
                    found.append(json.loads(payload))
        return found


# The path of a Slack webhook URL is its secret; so is a password on the command line.
WEBHOOK_SECRET = "T0SECRET/B0SECRET/webhook-secret-path"
ARGV_SECRET = "argv-secret-password"

REPORT_SCRIPT = f"""
import logging
import os
import urllib.request
import sentry_sdk
from catalog_pipeline.core.alerts import RunFailureAlert
from catalog_pipeline.observability import init_sentry, report_failure

assert init_sentry()
client = sentry_sdk.get_client()
assert init_sentry() and sentry_sdk.get_client() is client  # once per process
# An error log line about the same failure stays a breadcrumb, not a second event.
logging.getLogger("catalog_pipeline.ingest").error("chunk 3 failed")
# A webhook alert posted by the same process leaves no trace of its URL in the event.
request = urllib.request.Request(
    os.environ["TEST_WEBHOOK_URL"], data=b'{{"text": "failed"}}', method="POST"
)
urllib.request.urlopen(request, timeout=10).read()
report_failure(RunFailureAlert(
    object_key="scraper-a/items.csv",
    partition_key="scraper-a/items.csv",
    reason="chunk 3 at byte 1048576: price 'n/a' is not a number",
    run_id="{RUN_ID}",
    run_url=None,
    job_name="catalog_ingest",
    failed_chunks=(3,),
))
sentry_sdk.flush(timeout=5)
"""


def test_a_run_failure_reaches_sentry_as_one_event_grouped_by_object_and_reason():
    with SentryReceiver() as receiver:
        environment = {**os.environ, SENTRY_DSN_SETTING: receiver.dsn}
        environment["CATALOG_ENVIRONMENT"] = "test"
        environment["TEST_WEBHOOK_URL"] = f"{receiver.url}/services/{WEBHOOK_SECRET}"
        completed = subprocess.run(
            [
                sys.executable,
                "-c",
                REPORT_SCRIPT,
                "--database-url",
                f"postgresql://u:{ARGV_SECRET}@db/catalog",
            ],
            env=environment,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert completed.returncode == 0, completed.stderr

    assert receiver.other_posts == [f"/services/{WEBHOOK_SECRET}"]  # the webhook was called
    body = b"".join(receiver.envelopes)
    assert b"price 'n/a' is not a number" in body
    assert b"webhook-secret-path" not in body and b"B0SECRET" not in body
    assert ARGV_SECRET.encode() not in body
    assert RUN_ID.encode() in body
    (event,) = receiver.events()
    assert event["level"] == "error"
    assert event["environment"] == "test"
    assert "price 'n/a' is not a number" in json.dumps(event)
    assert event["tags"]["run_id"] == RUN_ID
    crumbs = event["breadcrumbs"]["values"]
    assert [crumb["message"] for crumb in crumbs] == ["chunk 3 failed"]  # the log line only
    assert event["tags"]["partition"] == "scraper-a/items.csv"
    assert event["tags"]["object_key"] == "scraper-a/items.csv"
    assert event["fingerprint"] == [
        "catalog-ingest-failure",
        "scraper-a/items.csv",
        "chunk 3 at byte 1048576: price 'n/a' is not a number",
    ]


def test_without_a_dsn_sentry_stays_off_and_reporting_does_nothing(monkeypatch):
    monkeypatch.delenv(SENTRY_DSN_SETTING, raising=False)
    assert init_sentry() is False
    report_failure(
        RunFailureAlert(
            object_key="k", partition_key="k", reason="r", run_id="x", run_url=None, job_name="j"
        )
    )
    assert init_sentry() is False
