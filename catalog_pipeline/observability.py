"""Where run failures and logs go besides the Dagster UI: Sentry when `SENTRY_DSN` is set,
and one JSON object per log line when `CATALOG_LOG_FORMAT=json` (for log shippers).

Both are off unless configured, and neither can fail a run: Sentry is an optional
dependency (`sentry-sdk`), and a log line that cannot be encoded falls back to `str`.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Mapping

import dagster as dg

from catalog_pipeline.core.alerts import RunFailureAlert, redact_secrets

SENTRY_DSN_SETTING = "SENTRY_DSN"  # a secret: never logged, never shown
ENVIRONMENT_SETTING = "CATALOG_ENVIRONMENT"
LOG_FORMAT_SETTING = "CATALOG_LOG_FORMAT"
# Fields a plain Python log record may carry as `extra={...}` (core.retry sets the last two).
EXTRA_FIELDS = ("run_id", "job", "step", "partition", "chunk", "attempt", "error_class")
# A chunk step's key ends in its mapping key: `catalog_ingest.process_chunk[chunk_00003]`.
_CHUNK_STEP = re.compile(r"\[chunk_(\d+)\]$")
_PARTITION_TAG = "dagster/partition"
# Sentry cuts tag values at 200 characters and messages at 8,192.
_TAG_LIMIT = 200
_MESSAGE_LIMIT = 8_000

log = logging.getLogger("catalog_pipeline.observability")
_sentry_lock = threading.Lock()
_sentry_active = False


def init_sentry() -> bool:
    """Start Sentry once per process when `SENTRY_DSN` is set and `sentry-sdk` is
    installed; whether Sentry is active. Safe to call from every entry point."""
    global _sentry_active
    if _sentry_active:
        return True
    dsn = os.environ.get(SENTRY_DSN_SETTING, "").strip()
    if not dsn:
        return False
    try:
        import sentry_sdk
        from sentry_sdk.integrations.atexit import AtexitIntegration
        from sentry_sdk.integrations.dedupe import DedupeIntegration
        from sentry_sdk.integrations.excepthook import ExcepthookIntegration
        from sentry_sdk.integrations.logging import LoggingIntegration
    except ImportError:
        log.warning(
            "%s is set but sentry-sdk is not installed: run failures are not sent to Sentry"
            " (install catalog_pipeline[observability])",
            SENTRY_DSN_SETTING,
        )
        return False
    with _sentry_lock:
        if _sentry_active:
            return True
        if not sentry_sdk.get_client().is_active():
            try:
                sentry_sdk.init(
                    dsn=dsn,
                    environment=os.environ.get(ENVIRONMENT_SETTING, "production"),
                    send_default_pii=False,
                    traces_sample_rate=0,
                    # Only these integrations: the defaults would record every HTTP
                    # request's URL as a breadcrumb (a Slack webhook's path is its
                    # secret), the command line (a database URL's password), and more.
                    default_integrations=False,
                    integrations=[
                        # Log lines stay breadcrumbs: each failure is one event, from
                        # `report_failure`, not one more per error line Dagster logs.
                        LoggingIntegration(event_level=None),
                        ExcepthookIntegration(),  # a crash of the process
                        DedupeIntegration(),
                        AtexitIntegration(),  # send what is queued before the exit
                    ],
                    before_breadcrumb=_scrub_breadcrumb,
                )
            except Exception as error:  # a malformed DSN must not stop the pipeline
                log.error(
                    "%s is not usable (%s): run failures are not sent to Sentry",
                    SENTRY_DSN_SETTING,
                    type(error).__name__,
                )
                return False
        _sentry_active = True
    return True


def _scrub_breadcrumb(crumb: dict, _hint: dict) -> dict | None:
    """Drop HTTP breadcrumbs, should an integration that records requests ever be on (a
    URL may be a secret: a Slack webhook's path); redact URL credentials in the others."""
    if crumb.get("type") == "http" or crumb.get("category") in ("httplib", "httpx"):
        return None
    if isinstance(crumb.get("message"), str):
        crumb["message"] = redact_secrets(crumb["message"])
    return crumb


def report_failure(alert: RunFailureAlert) -> None:
    """Send the failed run to Sentry as one error event, grouped by object and reason;
    nothing when Sentry is not configured."""
    if not init_sentry():
        return
    import sentry_sdk

    reason = redact_secrets(alert.reason.strip()) or "no reason recorded"
    sentry_sdk.capture_message(
        f"catalog ingest failed: {alert.object_key} — {reason}"[:_MESSAGE_LIMIT],
        level="error",
        tags={
            "run_id": alert.run_id,
            "job": alert.job_name[:_TAG_LIMIT],
            "partition": alert.partition_key[:_TAG_LIMIT],
            "object_key": alert.object_key[:_TAG_LIMIT],
        },
        fingerprint=["catalog-ingest-failure", alert.object_key, reason[:100]],
        contexts={
            "catalog_run": {
                "run_id": alert.run_id,
                "run_url": alert.run_url,
                "job": alert.job_name,
                "partition": alert.partition_key,
                "object_key": alert.object_key,
                "failed_chunks": list(alert.failed_chunks),
            }
        },
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `ts`, `level`, `logger`, `message`, and when known `run_id`,
    `job`, `step`, `partition`, `chunk`, `attempt`, `error_class`, `event`, `exception`.

    Reads Dagster's record metadata (`dagster_meta`) as well as plain `extra={...}` fields,
    so run logs and the pipeline's own Python loggers look alike."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        meta = getattr(record, "dagster_meta", None)
        if isinstance(meta, Mapping):
            entry.update(_dagster_fields(meta))
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        step = entry.get("step")
        if "chunk" not in entry and isinstance(step, str) and (match := _CHUNK_STEP.search(step)):
            entry["chunk"] = int(match.group(1))
        if record.exc_info and record.exc_info[0] is not None:
            entry.setdefault("error_class", record.exc_info[0].__name__)
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def _dagster_fields(meta: Mapping) -> dict[str, object]:
    fields: dict[str, object] = {
        "message": meta.get("orig_message"),  # without the run/step prefix the record has
        "run_id": meta.get("run_id"),
        "job": meta.get("job_name"),
        "step": meta.get("step_key"),
    }
    tags = meta.get("job_tags") or {}
    if isinstance(tags, Mapping):
        fields["partition"] = tags.get(_PARTITION_TAG)
    event = meta.get("dagster_event")
    if event is not None:
        fields["event"] = getattr(getattr(event, "event_type", None), "name", None)
        error = getattr(getattr(event, "event_specific_data", None), "error", None)
        if error is not None:
            innermost = error
            while getattr(innermost, "cause", None) is not None:
                innermost = innermost.cause  # the user's error, not Dagster's wrapper
            fields["error_class"] = getattr(innermost, "cls_name", None)
            fields["exception"] = error.to_string()
    return {name: value for name, value in fields.items() if value is not None}


class _StandardErrorHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when the line is written, not when the handler
    was made (test runners and daemons replace it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


# The config of Dagster's own console logger, so run config written for it still applies.
@dg.logger(
    config_schema={
        "log_level": dg.Field(
            str, is_required=False, default_value="INFO", description="The logger's threshold."
        ),
        "name": dg.Field(
            str, is_required=False, default_value="dagster", description="The logger's name."
        ),
    },
    description="Run logs as one JSON object per line on stderr, for log shippers.",
)
def json_console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    config = init_context.logger_config
    level = logging.getLevelName(config["log_level"].upper())
    # Not registered in logging's hierarchy: Dagster hands it each record, nothing else does.
    logger = logging.Logger(config["name"], level=level if isinstance(level, int) else logging.INFO)
    logger.addHandler(_StandardErrorHandler())
    return logger


def json_logs_enabled() -> bool:
    """Whether `CATALOG_LOG_FORMAT` asks for JSON log lines."""
    return os.environ.get(LOG_FORMAT_SETTING, "").strip().lower() == "json"


def loggers_from_environment() -> dict[str, dg.LoggerDefinition]:
    """The loggers for `Definitions(loggers=...)`: the JSON console logger in place of
    Dagster's colored one when JSON is asked for, else none (Dagster's default)."""
    return {"console": json_console_logger} if json_logs_enabled() else {}


def logger_run_config() -> dict:
    """The run config that puts the JSON logger to work when JSON is asked for, else `{}`.

    Dagster instantiates a job's own loggers only for runs whose config names them (else
    it uses its colored console logger), so every launch path merges this in."""
    return {"loggers": {"console": {}}} if json_logs_enabled() else {}


def configure_python_logging() -> None:
    """When JSON is asked for, make the `catalog_pipeline` loggers write JSON lines to
    stderr too (the CLI and other code outside a run). Calling it again changes nothing."""
    if not json_logs_enabled():
        return
    package_logger = logging.getLogger("catalog_pipeline")
    if any(isinstance(handler, _StandardErrorHandler) for handler in package_logger.handlers):
        return
    package_logger.addHandler(_StandardErrorHandler())
    if package_logger.level == logging.NOTSET:
        package_logger.setLevel(logging.INFO)
