"""Telling someone that an ingest run failed: the alert, its Slack-compatible webhook
message, and its delivery.

Delivery follows the pipeline's one retry rule (`core.retry`) with a short budget: a
webhook that is down for a moment gets the alert a few seconds late, one that refuses it
(a 4xx: wrong or revoked URL, bad payload) fails at once with an `AlertError`. Webhook
URLs carry their secret in the path, so no message here ever names more than the host.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from catalog_pipeline.core.errors import PermanentError, is_transient
from catalog_pipeline.core.retry import RetryPolicy, retrying

ALERT_WEBHOOK_SETTING = "CATALOG_ALERT_WEBHOOK_URL"  # a secret: never logged, never shown
# Long enough to ride out a webhook's brief hiccup, short enough not to hold a failing run.
ALERT_RETRY_POLICY = RetryPolicy(budget_seconds=30, first_delay=0.5, max_delay=5)
# Slack's limits: 3,000 characters for a section's text, 2,000 for a field, 150 for a header.
REASON_LIMIT = 2_900
FIELD_LIMIT = 1_900
# `scheme://user:password@` in a URL a reason quotes (a database URL in a driver's error).
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@]+@")


@dataclass(frozen=True, slots=True)
class RunFailureAlert:
    """What failed, why, and where to look: one run that ended without completing its file."""

    object_key: str
    partition_key: str
    reason: str
    run_id: str
    run_url: str | None
    job_name: str
    failed_chunks: tuple[int, ...] = ()


class AlertError(PermanentError):
    """The webhook refused the alert (or cannot be used); names its host, never its URL."""

    def __init__(self, host: str, status: int | None, detail: str = "") -> None:
        answered = f"answered HTTP {status}" if status is not None else "cannot be used"
        super().__init__(f"alert webhook {host} {answered}" + (f": {detail}" if detail else ""))
        self.host = host
        self.status = status
        self.detail = detail

    def __reduce__(self):
        return type(self), (self.host, self.status, self.detail)


def webhook_url_from_environment() -> str | None:
    """The configured webhook URL, or None when alerts by webhook are off."""
    return os.environ.get(ALERT_WEBHOOK_SETTING, "").strip() or None


def redact_secrets(text: str) -> str:
    """`text` with the credentials of any URL it quotes replaced by `***`."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


def slack_payload(alert: RunFailureAlert) -> dict:
    """The incoming-webhook message: a one-line `text` (notifications, clients without
    blocks) and `blocks` naming the partition, object, job, reason, failed chunks and run."""
    reason = redact_secrets(alert.reason.strip()) or "no reason recorded"
    fields = [
        _field("Partition", f"`{_escape(alert.partition_key)}`"),
        _field("Object key", f"`{_escape(alert.object_key)}`"),
        _field("Job", _escape(alert.job_name)),
        _field("Run", _run_link(alert)),
    ]
    if alert.failed_chunks:
        fields.append(_field("Failed chunks", _chunk_list(alert.failed_chunks)))
    return {
        "text": _truncate(
            f":rotating_light: catalog ingest failed: {_escape(alert.object_key)}"
            f" — {_escape(reason)}",
            REASON_LIMIT,
        ),
        "blocks": [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": "Catalog ingest failed", "emoji": True},
            },
            {"type": "section", "fields": fields},
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": f"*Reason*\n```{_truncate(_escape(reason), REASON_LIMIT)}```",
                },
            },
        ],
    }


def post_alert(
    url: str,
    alert: RunFailureAlert,
    timeout: float = 10.0,
    policy: RetryPolicy | None = None,
) -> None:
    """POST the alert's `slack_payload` to the webhook at `url`.

    Transient failures (refused or reset connections, timeouts, HTTP 408/429/5xx) are
    retried within `policy` (default `ALERT_RETRY_POLICY`), then raise
    `RetriesExhaustedError`; a refusal (any other 4xx) raises `AlertError` at once.
    """
    host = _host(url)
    if urlsplit(url).scheme not in ("http", "https") or not host:
        raise AlertError(
            host or "(no host)", None, f"{ALERT_WEBHOOK_SETTING} is not an http(s) URL"
        )
    body = json.dumps(slack_payload(alert)).encode()

    def send() -> None:
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
        except urllib.error.HTTPError as error:
            if is_transient(error):
                error.close()
                raise
            raise AlertError(host, error.code, _answer_text(error)) from None
        except urllib.error.URLError as error:
            if is_transient(error):
                raise
            raise AlertError(host, None, str(error.reason)) from None

    retrying(send, f"alert webhook {host}", policy or ALERT_RETRY_POLICY)


def _host(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{host}:{parts.port}" if host and parts.port else host


def _answer_text(error: urllib.error.HTTPError) -> str:
    """The start of the webhook's answer (Slack says why: `no_service`, `invalid_payload`)."""
    try:
        text = error.read(300).decode("utf-8", "replace")
    except OSError:
        return ""
    finally:
        error.close()
    return " ".join(text.split())[:200]


def _field(title: str, value: str) -> dict:
    return {"type": "mrkdwn", "text": _truncate(f"*{title}*\n{value}", FIELD_LIMIT)}


def _run_link(alert: RunFailureAlert) -> str:
    label = _escape(alert.run_id[:8])
    if not alert.run_url:
        return f"`{label}`"
    url = alert.run_url.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E")
    return f"<{url}|{label}>"


def _chunk_list(chunks: tuple[int, ...]) -> str:
    ordered = sorted(set(chunks))
    shown: list[str] = []
    length = 0
    for index in ordered:
        length += len(str(index)) + 2
        if length > FIELD_LIMIT - 100:  # room for the title and the count of the rest
            break
        shown.append(str(index))
    more = len(ordered) - len(shown)
    return ", ".join(shown) + (f" … (+{more} more)" if more else "")


def _escape(text: str) -> str:
    """Slack's mrkdwn escaping: `&`, `<` and `>` would otherwise start entities or links."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = re.sub(r"&[a-z]*$", "", text[: limit - 1])  # never half an escaped entity
    return cut + "…"
