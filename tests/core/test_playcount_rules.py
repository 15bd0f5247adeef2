"""Playcount rules without a database: outcomes, Retry-After, history, quota, lease, cap."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest

from catalog_pipeline.core.playcount import (
    BAD_RESPONSE,
    DEFAULT_RETRY_AFTER,
    DONE,
    FAILED,
    MAX_RETRY_AFTER,
    NO_DATA,
    OK,
    RATE_LIMITED,
    REJECTED,
    SERVER_ERROR,
    TIMEOUT,
    UNREACHABLE,
    BackfillPolicy,
    Claim,
    HistoryError,
    ProviderResponse,
    Reading,
    can_call,
    classify,
    day_bounds,
    drain,
    fixed_clock,
    parse_history,
    parse_moment,
    parse_retry_after,
    quota_left,
    rank_score,
)

NOW = datetime(2026, 11, 23, 12, 30, tzinfo=UTC)
HISTORY = json.dumps({"history": [{"date": "2026-10-01", "value": 5}]}).encode()


@pytest.mark.parametrize(
    ("response", "status", "outcome", "stops"),
    [
        (ProviderResponse(200, HISTORY), DONE, OK, False),
        (ProviderResponse(200, b'{"history": []}'), DONE, OK, False),
        (ProviderResponse(404), DONE, NO_DATA, False),
        (ProviderResponse(400), DONE, REJECTED, False),
        (ProviderResponse(401), DONE, REJECTED, False),
        (ProviderResponse(403), DONE, REJECTED, False),
        (ProviderResponse(410), DONE, REJECTED, False),
        (ProviderResponse(408), FAILED, TIMEOUT, False),
        (ProviderResponse(429, retry_after="30"), FAILED, RATE_LIMITED, True),
        (ProviderResponse(500), FAILED, SERVER_ERROR, False),
        (ProviderResponse(503), FAILED, SERVER_ERROR, False),
        (ProviderResponse(None, timed_out=True), FAILED, TIMEOUT, False),
        (ProviderResponse(None, error="refused"), FAILED, UNREACHABLE, False),
        (ProviderResponse(200, b"<html>"), FAILED, BAD_RESPONSE, False),
        (ProviderResponse(204), FAILED, BAD_RESPONSE, False),
        (ProviderResponse(301), FAILED, BAD_RESPONSE, False),
    ],
)
def test_every_answer_has_exactly_one_outcome(response, status, outcome, stops):
    decision = classify(response, NOW)
    assert (decision.status, decision.outcome, decision.stop_pass) == (status, outcome, stops)
    assert (decision.retry_after is not None) == (outcome == RATE_LIMITED)


def test_a_200_carries_its_readings_and_a_429_its_wait():
    assert classify(ProviderResponse(200, HISTORY), NOW).readings == (
        Reading(date(2026, 10, 1), 5),
    )
    limited = classify(ProviderResponse(429, retry_after="120"), NOW)
    assert limited.retry_after == timedelta(seconds=120)


@pytest.mark.parametrize(
    ("header", "wait"),
    [
        ("30", timedelta(seconds=30)),
        (" 0 ", timedelta(0)),
        ("Mon, 23 Nov 2026 12:32:00 GMT", timedelta(minutes=2)),
        ("Mon, 23 Nov 2026 12:00:00 GMT", timedelta(0)),  # in the past: no wait
        ("999999999", MAX_RETRY_AFTER),
        (None, DEFAULT_RETRY_AFTER),
        ("soon", DEFAULT_RETRY_AFTER),
        ("-5", DEFAULT_RETRY_AFTER),
    ],
)
def test_retry_after_is_seconds_or_an_http_date_within_bounds(header, wait):
    assert parse_retry_after(header, NOW) == wait


def test_history_keeps_one_reading_per_day_in_date_order():
    body = json.dumps(
        {
            "history": [
                {"date": "2026-10-02", "value": 7},
                {"date": "2026-10-01", "value": 5},
                {"date": "2026-10-02", "value": 8},
            ]
        }
    ).encode()
    assert parse_history(body) == (
        Reading(date(2026, 10, 1), 5),
        Reading(date(2026, 10, 2), 8),
    )


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b"{}",
        b'{"history": {}}',
        b'{"history": [1]}',
        b'{"history": [{"value": 1}]}',
        b'{"history": [{"date": "01/10/2026", "value": 1}]}',
        b'{"history": [{"date": "2026-10-01", "value": -1}]}',
        b'{"history": [{"date": "2026-10-01", "value": 1.5}]}',
        b'{"history": [{"date": "2026-10-01", "value": "7"}]}',
        b'{"history": [{"date": "2026-10-01", "value": true}]}',
    ],
)
def test_a_malformed_history_is_an_error_not_data(body):
    with pytest.raises(HistoryError):
        parse_history(body)


def test_ranking_quota_and_day_bounds():
    assert rank_score(None) == 0.0 < rank_score(3) < rank_score(1_000_000)
    assert quota_left(10, 4) == 6 and quota_left(10, 12) == 0
    assert can_call(10, 9) and not can_call(10, 10)
    start, end = day_bounds(NOW)
    assert start == datetime(2026, 11, 23, tzinfo=UTC) and end - start == timedelta(days=1)


def test_policy_lease_and_attempts_cap():
    policy = BackfillPolicy(max_attempts=3, lease=timedelta(hours=1))
    assert [policy.retryable(n) for n in (0, 1, 2, 3, 4)] == [True, True, True, False, False]
    assert policy.lease_cutoff(NOW) == NOW - timedelta(hours=1)
    with pytest.raises(ValueError):
        BackfillPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        BackfillPolicy(lease=timedelta(0))


def test_the_injectable_clock_reads_utc():
    assert fixed_clock(datetime(2026, 1, 1, 5))() == datetime(2026, 1, 1, 5, tzinfo=UTC)
    assert parse_moment("2026-01-01T06:00:00+01:00") == datetime(2026, 1, 1, 5, tzinfo=UTC)


class ListQueue:
    """The `DrainStore` contract over a list: rows claimed in order, outcomes recorded."""

    def __init__(self, external_ids: list[str]) -> None:
        self.pending = list(external_ids)
        self.recorded: list[tuple[str, str]] = []

    def claim(self, now: datetime, daily_quota: int) -> Claim | None:
        if not self.pending or not can_call(daily_quota, self.quota_used(now)):
            return None
        number = len(self.recorded)
        return Claim(number, number, self.pending.pop(0), 1, number)

    def quota_used(self, now: datetime) -> int:
        return len(self.recorded)

    def record(self, claim, response, decision, now) -> int:
        self.recorded.append((claim.external_id, decision.outcome))
        return len(decision.readings)


REFUSED = ProviderResponse(None, error="connection refused")
ANSWERS = {
    "5xx": ProviderResponse(503),
    "timeout": ProviderResponse(None, timed_out=True),
    "408": ProviderResponse(408),
    "refused": REFUSED,
    "404": ProviderResponse(404),
    "ok": ProviderResponse(200, HISTORY),
    "unusable": ProviderResponse(200, b"<html>"),
}


def drain_script(script: list[str], **options) -> tuple:
    queue = ListQueue([f"{number}:{answer}" for number, answer in enumerate(script)])
    report = drain(queue, lambda external_id: ANSWERS[external_id.split(":")[1]], 1000, **options)
    return report.calls, report.stopped_by, [outcome for _, outcome in queue.recorded]


def test_five_calls_in_a_row_without_an_answer_stop_the_pass_by_default():
    outage = ["5xx", "timeout", "408", "refused", "5xx", "5xx", "ok"]
    assert drain_script(outage)[:2] == (5, "provider_failing")
    # Any answer that is not a transport failure starts the count again, even an unusable one.
    for answer in ("ok", "404", "unusable"):
        script = ["5xx"] * 4 + [answer] + ["timeout"] * 4 + ["ok"]
        assert drain_script(script)[:2] == (10, "queue_empty")
    assert drain_script(["refused"] * 4 + ["404"] + ["refused"] * 6)[:2] == (
        10,
        "provider_failing",
    )
    assert drain_script(outage, max_consecutive_failures=2)[:2] == (2, "provider_failing")
    assert drain_script(outage, max_consecutive_failures=0) == (
        7,
        "queue_empty",
        ["server_error", "timeout", "timeout", "unreachable", "server_error", "server_error", "ok"],
    )
