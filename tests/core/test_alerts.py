"""Run-failure alerts delivered to a real local webhook: the Slack message, the retry of
transient answers, the refusal that fails at once, and a webhook that is not there."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from catalog_pipeline.core.alerts import (
    ALERT_WEBHOOK_SETTING,
    AlertError,
    RunFailureAlert,
    post_alert,
    slack_payload,
    webhook_url_from_environment,
)
from catalog_pipeline.core.errors import RetriesExhaustedError, is_transient
from catalog_pipeline.core.retry import RetryPolicy

SECRET_PATH = "/services/T0001/B0001/s3cr3tT0ken"
QUICK = RetryPolicy(budget_seconds=3, first_delay=0.02, max_delay=0.1)

ALERT = RunFailureAlert(
    object_key="scraper-a/2026/12/items.csv.gz",
    partition_key="scraper-a/2026/12/items.csv.gz",
    reason="chunk 3 at byte 1048576: price 'n/a' is not a number",
    run_id="4f2b9c1e-7a3d-4e8f-9b0a-1c2d3e4f5a6b",
    run_url="http://dagster.internal:3000/runs/4f2b9c1e-7a3d-4e8f-9b0a-1c2d3e4f5a6b",
    job_name="catalog_ingest",
    failed_chunks=(3, 7),
)


class Webhook:
    """A local webhook that records every request and answers with the scripted statuses
    first (each a status, or a number of seconds to stall before answering 200), then 200."""

    def __init__(self, *answers: int | float) -> None:
        self.answers = list(answers)
        self.requests: list[dict] = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                webhook.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body}
                )
                answer = webhook.answers.pop(0) if webhook.answers else 200
                if isinstance(answer, float):
                    time.sleep(answer)
                    answer = 200
                text = b"ok" if answer == 200 else b"no_service"
                try:
                    self.send_response(answer)
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                except OSError:
                    pass  # a client that timed out has gone

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{SECRET_PATH}"

    def __enter__(self) -> Webhook:
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_alert_is_posted_once_as_slack_json_naming_partition_reason_and_run():
    with Webhook() as webhook:
        post_alert(webhook.url, ALERT, policy=QUICK)

    assert len(webhook.requests) == 1
    request = webhook.requests[0]
    assert request["path"] == SECRET_PATH
    assert request["headers"]["Content-Type"] == "application/json"
    payload = json.loads(request["body"])
    assert payload == slack_payload(ALERT)
    assert payload["text"] == (
        ":rotating_light: catalog ingest failed: scraper-a/2026/12/items.csv.gz"
        " — chunk 3 at byte 1048576: price 'n/a' is not a number"
    )
    blocks = json.dumps(payload["blocks"])
    assert "`scraper-a/2026/12/items.csv.gz`" in blocks
    assert "price 'n/a' is not a number" in blocks
    assert f"<{ALERT.run_url}|4f2b9c1e>" in blocks
    assert "3, 7" in blocks


def test_the_message_stays_within_slack_limits_and_quotes_no_credentials():
    alert = RunFailureAlert(
        object_key="scraper-a/x.csv",
        partition_key="scraper-a/x.csv",
        reason="could not connect to postgresql://catalog:hunter2@db:5432/catalog <& " * 500,
        run_id="0123456789",
        run_url=None,
        job_name="catalog_ingest",
    )
    payload = slack_payload(alert)
    reason_text = payload["blocks"][2]["text"]["text"]
    assert len(reason_text) <= 3000
    assert len(payload["text"]) <= 3000
    assert "hunter2" not in json.dumps(payload)
    assert "postgresql://***@db:5432" in reason_text
    assert "&lt;&amp;" in reason_text and "<&" not in reason_text
    assert "`01234567`" in json.dumps(payload["blocks"][1])  # no link without a run URL
    assert "Failed chunks" not in json.dumps(payload)


@pytest.mark.parametrize("status", [503, 429])
def test_transient_answers_are_retried_until_the_alert_is_accepted(status):
    with Webhook(status, status) as webhook:
        post_alert(webhook.url, ALERT, policy=QUICK)
    assert len(webhook.requests) == 3
    assert all(json.loads(r["body"]) == slack_payload(ALERT) for r in webhook.requests)


def test_a_webhook_that_times_out_is_retried():
    with Webhook(1.0) as webhook:
        post_alert(webhook.url, ALERT, timeout=0.2, policy=QUICK)
    assert len(webhook.requests) == 2


def test_a_refusal_fails_at_once_naming_the_host_but_never_the_secret_path():
    with Webhook(404) as webhook:
        started = time.monotonic()
        with pytest.raises(AlertError) as caught:
            post_alert(webhook.url, ALERT, policy=RetryPolicy(budget_seconds=30))
    assert time.monotonic() - started < 1
    assert len(webhook.requests) == 1
    message = str(caught.value)
    port = webhook.server.server_address[1]
    assert f"127.0.0.1:{port}" in message
    assert "404" in message and "no_service" in message
    assert "s3cr3tT0ken" not in message and "/services" not in message
    assert caught.value.status == 404
    assert not is_transient(caught.value)


def test_a_webhook_that_is_not_there_exhausts_the_retry_budget():
    url = f"http://127.0.0.1:{_closed_port()}{SECRET_PATH}"
    policy = RetryPolicy(budget_seconds=0.5, first_delay=0.05, max_delay=0.1)
    with pytest.raises(RetriesExhaustedError) as caught:
        post_alert(url, ALERT, timeout=1, policy=policy)
    assert caught.value.attempts > 1
    assert "127.0.0.1" in str(caught.value)
    assert "s3cr3tT0ken" not in str(caught.value)


def test_a_url_that_is_not_http_is_refused_without_quoting_it():
    with pytest.raises(AlertError) as caught:
        post_alert("ftp://files.example.com/hooks/s3cr3tT0ken", ALERT, policy=QUICK)
    assert "files.example.com" in str(caught.value)
    assert "s3cr3tT0ken" not in str(caught.value)


def test_the_webhook_url_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(ALERT_WEBHOOK_SETTING, raising=False)
    assert webhook_url_from_environment() is None
    monkeypatch.setenv(ALERT_WEBHOOK_SETTING, "  ")
    assert webhook_url_from_environment() is None
    monkeypatch.setenv(ALERT_WEBHOOK_SETTING, "https://hooks.slack.com/services/T/B/x ")
    assert webhook_url_from_environment() == "https://hooks.slack.com/services/T/B/x"
