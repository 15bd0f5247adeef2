"""The failure ledger of `item_classifications` (`derivation_failures`), through real Dagster
runs on SQLite and Postgres against the local chat-completions server: an item that fails
`max_failures` times is skipped until its content changes or a run sets `retry_failed`, a
success clears it, an outage (a whole batch failing) blames no item, transient database
errors are retried with each write counted once, and the counts in the metadata. Also the
ledger helpers on their own."""

from __future__ import annotations

import json
import logging
import sqlite3

import dagster as dg
import pytest
from sqlalchemy import Engine, event, select

from catalog_pipeline.assets.classifications import reclassify_catalog_job
from catalog_pipeline.core.classification import KeywordClassifier
from catalog_pipeline.core.retry import RetryPolicy, retrying
from catalog_pipeline.db.derivation_failures import (
    MAX_ERROR_CHARS,
    MAX_FAILURES_VARIABLE,
    blocked_item_ids,
    clear_failures,
    failure_counts,
    max_failures_setting,
    record_failures,
)
from catalog_pipeline.db.tables import catalog_items, derivation_failures, utcnow
from catalog_pipeline.resources.catalog import CatalogDatabase
from catalog_pipeline.resources.classifier import ClassifierResource
from tests.assets.test_item_classifications import classify, ingest
from tests.assets.test_item_classifications import csv_bytes as item_csv_bytes
from tests.chat_server import ChatServer, scraper_category

PRODUCTS = [
    ("Nordwand Trailhead 2 dome tent", "Nordwand", "outdoor/tents", "Two doors."),
    ("Ascent 45 backpack", "Kestrel", "outdoor/backpacks", "Trekking backpack."),
    ("Garden hose 25 m", "Bright&Co", "Garden", "Kink-free hose."),
    ("Midnight Harbour vinyl LP", "Sonora Records", "media/music", "180 g reissue."),
    ("A Winter in the Fjords", "Ülla Press", "media/books", "A novel, paperback."),
    ("Space Frontier (PS5)", "Bright&Co", "media/games", "Open-world game."),
]
HOSE = "P-002"  # the item the server answers badly about
SKUS = {name: f"P-{index:03d}" for index, (name, *_) in enumerate(PRODUCTS)}
KEY = "shop [eu]_2026-11-01T06-00-00.csv"
NEWER_KEY = "shop [eu]_2026-11-08T06-00-00.csv"
NEWEST_KEY = "shop [eu]_2026-11-15T06-00-00.csv"


def fails_on_hoses(item: dict) -> dict:
    """An answer outside the taxonomy for the hose (a per-item failure), good for the rest."""
    if "hose" in item["name"]:
        return {"id": item["id"], "category": "garden/hoses", "confidence": 0.8}
    return scraper_category(item)


def csv_bytes(changed: dict[int, str] | None = None) -> bytes:
    return item_csv_bytes(PRODUCTS, changed=changed)


def openai(server: ChatServer) -> ClassifierResource:
    return ClassifierResource(
        kind="openai",
        openai_base_url=server.base_url,
        openai_model="test-model",
        batch_size=3,
        max_retries=1,
        backoff_seconds=0.01,
    )


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    assert result.success, result.all_events
    materialization = result.asset_materializations_for_node("item_classifications")[0]
    return {
        name: getattr(value, "value", value) for name, value in materialization.metadata.items()
    }


def asked(server: ChatServer, since: int = 0) -> list[str]:
    """SKUs of the items sent to the server in its requests from number `since` on."""
    return [
        SKUS[item["name"]] for request in server.requests[since:] for item in request_items(request)
    ]


def request_items(request: dict) -> list[dict]:
    return json.loads(request["body"]["messages"][-1]["content"])


def ledger(engine: Engine) -> dict[str, tuple]:
    """sku -> (deriver, attempts, last_error, input_hash == content_hash, first, last)."""
    rows = derivation_failures.c
    query = select(
        catalog_items.c.sku,
        rows.deriver,
        rows.attempts,
        rows.last_error,
        rows.input_hash == catalog_items.c.content_hash,
        rows.first_failed_at,
        rows.last_failed_at,
    ).join(catalog_items, catalog_items.c.id == rows.item_id)
    with engine.connect() as connection:
        return {row[0]: tuple(row[1:]) for row in connection.execute(query)}


def attempts(engine: Engine) -> dict[str, int]:
    return {sku: row[1] for sku, row in ledger(engine).items()}


def test_an_item_failing_five_times_is_skipped_until_retry_failed_and_a_success_clears_it(
    engine, local_bucket
):
    with dg.instance_for_test() as instance, ChatServer(fails_on_hoses) as server:
        ingest(local_bucket, engine, instance, KEY, csv_bytes())
        resource = openai(server)
        runs = []
        for run in range(5):
            before = len(server.requests)
            runs.append(metadata(classify(engine, instance, KEY, resource)))
            # The first run asks about every item; each later one only about the hose.
            assert asked(server, before) == (list(SKUS.values()) if run == 0 else [HOSE])
            assert attempts(engine) == {HOSE: run + 1}
        after_five = ledger(engine)

        # The sixth run: the hose is not sent, and the metadata says why.
        before = len(server.requests)
        sixth = metadata(classify(engine, instance, KEY, resource))
        assert len(server.requests) == before  # nothing to pay for
        assert ledger(engine) == after_five  # and nothing recorded
        seventh = metadata(classify(engine, instance, KEY, resource))
        assert ledger(engine) == after_five and len(server.requests) == before

        # `retry_failed` sends it again: one more failure on the record.
        retried = metadata(classify(engine, instance, KEY, resource, retry_failed=True))
        assert asked(server, before) == [HOSE]
        assert attempts(engine) == {HOSE: 6}

        # The model learns the taxonomy: a retried success clears the row.
        server.answer = scraper_category
        fixed = metadata(classify(engine, instance, KEY, resource, retry_failed=True))
        assert asked(server, before) == [HOSE, HOSE]
        assert ledger(engine) == {}

    deriver, count, last_error, same_input, first_failed, last_failed = after_five[HOSE]
    assert deriver == runs[0]["classifier"] == "openai@test-model/p1/2026.1"
    assert "'garden/hoses' is not in taxonomy" in last_error and same_input
    assert first_failed < last_failed
    first = runs[0]
    assert (first["classified"], first["failed"], first["classification_failures"]) == (5, 1, 1)
    assert (first["items_skipped_after_failures"], first["total_classification_failures"]) == (0, 1)
    for later in runs[1:]:
        assert (later["classified"], later["skipped"], later["failed"]) == (0, 5, 1)
        assert later["classification_failures"] == 1
    # After the fifth failure the hose is blocked: counted, but not yet skipped by anyone.
    assert [run["total_items_blocked_after_failures"] for run in runs] == [0, 0, 0, 0, 1]
    assert "skipped_after_failures" not in runs[-1]
    for quiet in (sixth, seventh):
        assert (quiet["classified"], quiet["classification_failures"]) == (0, 0)
        assert (quiet["skipped"], quiet["items_skipped_after_failures"]) == (5, 1)
        assert quiet["deferred"] == 0  # skipped is not deferred: no later run sends it
        assert quiet["total_classification_failures"] == 1
        assert quiet["total_items_blocked_after_failures"] == 1
        [record] = quiet["skipped_after_failures"].records
        assert (record.data["sku"], record.data["attempts"]) == (HOSE, 5)
        assert "'garden/hoses' is not in taxonomy" in record.data["last_error"]
    assert (retried["classification_failures"], retried["items_skipped_after_failures"]) == (1, 0)
    assert retried["total_classification_failures"] == 1
    assert (fixed["classified"], fixed["classification_failures"]) == (1, 0)
    assert (fixed["total_classification_failures"], fixed["dagster/row_count"]) == (0, 6)


def test_changed_content_restarts_the_count_and_the_limit_is_configurable(engine, local_bucket):
    with dg.instance_for_test() as instance, ChatServer(fails_on_hoses) as server:
        ingest(local_bucket, engine, instance, KEY, csv_bytes())
        resource = openai(server)
        for _ in range(2):
            classify(engine, instance, KEY, resource, max_failures=2)
        blocked = ledger(engine)[HOSE]
        before = len(server.requests)
        skipped = metadata(classify(engine, instance, KEY, resource, max_failures=2))
        assert len(server.requests) == before and skipped["items_skipped_after_failures"] == 1
        # The default limit (5) would send it again.
        assert metadata(classify(engine, instance, KEY, resource))["classification_failures"] == 1
        assert attempts(engine) == {HOSE: 3}

        # A newer scrape rewrites the hose's description: fresh chances, counted from 1.
        ingest(local_bucket, engine, instance, NEWER_KEY, csv_bytes({2: "Now kink-free."}))
        before = len(server.requests)
        changed = metadata(classify(engine, instance, NEWER_KEY, resource, max_failures=2))
        assert asked(server, before) == [HOSE]
        _, count, _, same_input, first_failed, _ = ledger(engine)[HOSE]
        assert (count, same_input) == (1, True) and first_failed > blocked[4]
        assert changed["classification_failures"] == 1
        assert changed["items_skipped_after_failures"] == 0
        classify(engine, instance, NEWER_KEY, resource, max_failures=2)
        assert attempts(engine) == {HOSE: 2}
        before = len(server.requests)
        again = metadata(classify(engine, instance, NEWER_KEY, resource, max_failures=2))
        assert len(server.requests) == before and again["items_skipped_after_failures"] == 1

        # Changed again, and this time the answer is good: classified, the row is gone.
        ingest(local_bucket, engine, instance, NEWEST_KEY, csv_bytes({2: "Fixed hose."}))
        server.answer = scraper_category
        fixed = metadata(classify(engine, instance, NEWEST_KEY, resource, max_failures=2))
    assert (fixed["classified"], fixed["total_classification_failures"]) == (1, 0)
    assert ledger(engine) == {}


def step_failure(result: dg.ExecuteInProcessResult):
    assert not result.success
    event = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    return event.step_failure_data


def test_an_outage_blocks_no_item_and_records_nothing_and_every_item_is_classified_after_it(
    engine, local_bucket
):
    """The endpoint fails a whole batch (HTTP 500 after the client's retries) in six runs in
    a row, more than `max_failures` (5), then refuses the key once: no item is to blame, so
    the ledger stays empty, every run asks about the first batch again, and once the
    endpoint answers every item is classified."""
    first_batch = list(SKUS.values())[:3]
    with dg.instance_for_test() as instance, ChatServer() as server:
        ingest(local_bucket, engine, instance, KEY, csv_bytes())
        resource = openai(server)
        outages = []
        for _ in range(6):
            before = len(server.requests)
            server.script = [(500, b'{"error": "internal"}', {})] * 2  # both tries of batch 1
            outages.append(classify(engine, instance, KEY, resource))
            assert asked(server, before) == first_batch * 2  # nothing skipped, nothing blamed
            assert ledger(engine) == {}
        before = len(server.requests)
        server.script = [(401, b'{"error": "invalid api key"}', {})]
        refused = classify(engine, instance, KEY, resource)
        assert asked(server, before) == first_batch and ledger(engine) == {}
        before = len(server.requests)
        healed = metadata(classify(engine, instance, KEY, resource))
        assert asked(server, before) == list(SKUS.values())
    for outage in outages:
        failure = step_failure(outage)
        assert (
            f"{KEY}: classifier openai@test-model/p1/2026.1 failed after storing 0 of 6 items "
            "(stored results are kept; the next run continues with the rest): "
        ) in failure.error.message
        assert "failed 2 times; last: HTTP 500" in failure.error.message
        values = {name: value.value for name, value in failure.user_failure_data.metadata.items()}
        assert values == {
            "classifier": "openai@test-model/p1/2026.1",
            "classified": 0,
            "classification_failures": 0,
            "object_key": KEY,
        }
    assert "HTTP 401 (not retried)" in step_failure(refused).error.message
    assert (healed["classified"], healed["failed"], healed["skipped"]) == (6, 0, 0)
    assert (healed["items_skipped_after_failures"], healed["total_classification_failures"]) == (
        0,
        0,
    )
    assert healed["dagster/row_count"] == len(PRODUCTS)
    assert ledger(engine) == {}


class FlakyDatabase:
    """Fails each distinct statement the catalog database is sent about items, results or
    the ledger once, the first time it is seen, with the transient error of the dialect's
    driver (SQLite: "database is locked"; PostgreSQL: a serialization failure, 40001),
    then lets it through. A statement failing inside a transaction rolls all of it back."""

    TABLES = ("catalog_items", "item_classifications", "derivation_failures")

    def __init__(self, engine: Engine) -> None:
        self.url = engine.url.render_as_string(hide_password=False)
        self.dialect = engine.dialect.name
        self.seen: set[str] = set()
        self.failed: list[str] = []

    def __enter__(self) -> FlakyDatabase:
        event.listen(Engine, "before_cursor_execute", self.before_execute)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(Engine, "before_cursor_execute", self.before_execute)

    def before_execute(self, connection, cursor, statement, *args) -> None:
        if connection.engine.url.render_as_string(hide_password=False) != self.url:
            return  # Dagster's own storage, another test's database
        if statement in self.seen or not any(table in statement for table in self.TABLES):
            return
        self.seen.add(statement)
        self.failed.append(" ".join(statement.split())[:60])
        if self.dialect == "sqlite":
            raise sqlite3.OperationalError("database is locked")
        from psycopg.errors import SerializationFailure

        raise SerializationFailure("could not serialize access due to concurrent update")


def test_transient_database_errors_are_retried_and_each_write_counts_once(
    engine, local_bucket, monkeypatch, caplog
):
    monkeypatch.setattr(RetryPolicy, "delay", lambda self, attempt: 0.01)
    caplog.set_level(logging.WARNING, logger="catalog_pipeline.retry")
    with dg.instance_for_test() as instance, ChatServer(fails_on_hoses) as server:
        ingest(local_bucket, engine, instance, KEY, csv_bytes())
        resource = openai(server)
        with FlakyDatabase(engine) as flaky:
            first = classify(engine, instance, KEY, resource)
        first_failed = list(flaky.failed)
        after_first = attempts(engine)
        with FlakyDatabase(engine) as flaky:
            second = classify(engine, instance, KEY, resource, max_failures=1)
        second_failed = list(flaky.failed)
    one, two = metadata(first), metadata(second)
    # Each of the run's statements failed once (the results' upsert and the clearing of
    # their failures: one transaction, failed at either statement) and was retried.
    assert len(first_failed) >= 6 and len(second_failed) >= 3
    assert any(s.upper().startswith("INSERT INTO ITEM_CLASSIFICATIONS") for s in first_failed)
    assert any(s.upper().startswith("DELETE FROM DERIVATION_FAILURES") for s in first_failed)
    assert any(s.upper().startswith("INSERT INTO DERIVATION_FAILURES") for s in first_failed)
    retried = {record.getMessage().split(": transient failure")[0] for record in caplog.records}
    assert {
        f"{KEY}: counting items to classify",
        f"{KEY}: reading items to classify after id 0",
        f"{KEY}: storing the results of 2 items",
        f"{KEY}: recording the failures of 1 item",
        f"{KEY}: reading the category distribution",
        f"{KEY}: counting ledger failures",
        f"{KEY}: reading skipped items",
    } <= retried
    # The outcome is that of a run without faults; the hose's failure is counted once.
    assert (one["classified"], one["failed"], one["classification_failures"]) == (5, 1, 1)
    assert (one["total_classification_failures"], one["dagster/row_count"]) == (1, 5)
    assert after_first == {HOSE: 1}
    assert (two["classified"], two["skipped"], two["items_skipped_after_failures"]) == (0, 5, 1)
    assert [r.data["sku"] for r in two["skipped_after_failures"].records] == [HOSE]
    assert attempts(engine) == {HOSE: 1}
    assert len(server.items_asked()) == len(PRODUCTS)  # no batch was sent twice


def test_a_retried_failure_record_whose_commit_was_lost_counts_once(engine, local_bucket):
    with dg.instance_for_test() as instance:
        ingest(local_bucket, engine, instance, KEY, csv_bytes())
    tent, tent_hash = item_hashes(engine)["P-000"]
    deriver = "openai@test-model/p1/2026.1"
    record_failures(engine, deriver, [(tent, tent_hash, "first")])
    failed_at, calls = utcnow(), []

    def commit_then_lose_the_answer() -> int:
        recorded = record_failures(engine, deriver, [(tent, tent_hash, "second")], failed_at)
        calls.append(recorded)
        if len(calls) == 1:
            raise ConnectionResetError("connection reset before the commit was acknowledged")
        return recorded

    assert retrying(commit_then_lose_the_answer, "ledger", RetryPolicy(first_delay=0.01)) == 1
    assert calls == [1, 1]
    assert ledger_rows(engine)[(tent, deriver)] == (2, "second")  # not 3
    # Another failure (another time) counts again.
    record_failures(engine, deriver, [(tent, tent_hash, "third")])
    assert ledger_rows(engine)[(tent, deriver)] == (3, "third")


def test_the_limit_comes_from_the_environment_and_a_bad_value_fails_clearly(
    sqlite_engine, local_bucket, monkeypatch
):
    monkeypatch.setenv(MAX_FAILURES_VARIABLE, "1")
    with dg.instance_for_test() as instance, ChatServer(fails_on_hoses) as server:
        ingest(local_bucket, sqlite_engine, instance, KEY, csv_bytes())
        resource = openai(server)
        classify(sqlite_engine, instance, KEY, resource)
        before = len(server.requests)
        skipped = metadata(classify(sqlite_engine, instance, KEY, resource))
        assert len(server.requests) == before and skipped["items_skipped_after_failures"] == 1
        monkeypatch.setenv(MAX_FAILURES_VARIABLE, "none")
        bad = classify(sqlite_engine, instance, KEY, resource)
        zero = classify(sqlite_engine, instance, KEY, resource, max_failures=0)
    messages = [
        next(
            e for e in result.all_events if e.event_type_value == "STEP_FAILURE"
        ).step_failure_data.error.message
        for result in (bad, zero)
    ]
    assert f"{MAX_FAILURES_VARIABLE}='none'" in messages[0]
    assert "max_failures must be 1 or more, not 0" in messages[1]


def test_rerunning_the_keyword_classifier_classifies_nothing_and_records_no_failures(
    engine, local_bucket
):
    with dg.instance_for_test() as instance:
        ingest(local_bucket, engine, instance, KEY, csv_bytes())
        runs = [metadata(classify(engine, instance, KEY, ClassifierResource())) for _ in range(2)]
    assert [run["classified"] for run in runs] == [len(PRODUCTS), 0]
    for run in runs:
        assert (run["classification_failures"], run["items_skipped_after_failures"]) == (0, 0)
        assert run["total_classification_failures"] == 0
    assert ledger(engine) == {}


def item_hashes(engine: Engine) -> dict[str, tuple[int, str]]:
    query = select(catalog_items.c.sku, catalog_items.c.id, catalog_items.c.content_hash)
    with engine.connect() as connection:
        return {
            sku: (item_id, content_hash) for sku, item_id, content_hash in connection.execute(query)
        }


def ledger_rows(engine: Engine) -> dict[tuple[int, str], tuple[int, str]]:
    """(item id, deriver) -> (attempts, last_error)."""
    rows = derivation_failures.c
    query = select(rows.item_id, rows.deriver, rows.attempts, rows.last_error)
    with engine.connect() as connection:
        return {(row[0], row[1]): (row[2], row[3]) for row in connection.execute(query)}


def test_the_ledger_helpers_count_restart_block_and_clear(engine, local_bucket):
    with dg.instance_for_test() as instance:
        ingest(local_bucket, engine, instance, KEY, csv_bytes())
    items = item_hashes(engine)
    (tent, tent_hash), (pack, pack_hash) = items["P-000"], items["P-001"]
    deriver, other = "embedder@1", f"keyword@{KeywordClassifier().version}"
    long_error = "x" * (MAX_ERROR_CHARS + 500)
    for _ in range(3):
        record_failures(engine, deriver, [(tent, tent_hash, "timeout"), (pack, pack_hash, "bad")])
    # Listed twice in one call: counted once, the last error kept (and trimmed).
    assert record_failures(engine, deriver, [(tent, tent_hash, "a"), (tent, tent_hash, long_error)])
    record_failures(engine, other, [(tent, tent_hash, "elsewhere")])
    rows = ledger_rows(engine)
    assert rows[(tent, deriver)] == (4, "x" * MAX_ERROR_CHARS)
    assert rows[(pack, deriver)] == (3, "bad") and rows[(tent, other)] == (1, "elsewhere")
    assert blocked_item_ids(engine, deriver, 3) == {tent, pack}
    assert blocked_item_ids(engine, deriver, 4) == {tent}
    assert failure_counts(engine, deriver, 4) == (2, 1)
    # A failure on other input (the content changed since) restarts the count at 1.
    record_failures(engine, deriver, [(pack, "0" * 64, "new content, still bad")])
    assert ledger_rows(engine)[(pack, deriver)] == (1, "new content, still bad")
    assert blocked_item_ids(engine, deriver, 1) == {tent}  # its stored hash is stale
    # Inside the caller's transaction: a rollback undoes it.
    with engine.connect() as connection, connection.begin() as transaction:
        assert clear_failures(connection, deriver, [tent, pack, tent]) == 2
        transaction.rollback()
    assert failure_counts(engine, deriver, 1) == (2, 1)
    assert clear_failures(engine, deriver, [tent, pack]) == 2
    assert failure_counts(engine, deriver, 1) == (0, 0)
    assert failure_counts(engine, other, 1) == (1, 1)  # another deriver's rows are its own


@pytest.mark.parametrize("value", ["0", "-1", "five"])
def test_a_bad_limit_in_the_environment_is_refused(monkeypatch, value):
    monkeypatch.setenv(MAX_FAILURES_VARIABLE, value)
    with pytest.raises(ValueError, match=MAX_FAILURES_VARIABLE):
        max_failures_setting()


def test_the_catalog_wide_job_skips_blocked_items_too(sqlite_engine, local_bucket):
    url = sqlite_engine.url.render_as_string(hide_password=False)
    with dg.instance_for_test() as instance, ChatServer(fails_on_hoses) as server:
        ingest(local_bucket, sqlite_engine, instance, KEY, csv_bytes())
        resources = {"catalog_db": CatalogDatabase(url=url), "classifier": openai(server)}
        config = {"ops": {"reclassify_catalog": {"config": {"max_failures": 1}}}}
        runs = [
            reclassify_catalog_job.execute_in_process(
                run_config=config, instance=instance, resources=resources
            )
            for _ in range(2)
        ]
    first, second = (op_output_metadata(run) for run in runs)
    assert (first["classified"], first["classification_failures"]) == (5, 1)
    assert (second["classified"], second["items_skipped_after_failures"]) == (0, 1)
    assert [r.data["sku"] for r in second["skipped_after_failures"].records] == [HOSE]
    assert len(server.items_asked()) == len(PRODUCTS)  # the hose was asked about once


def op_output_metadata(result: dg.ExecuteInProcessResult) -> dict:
    assert result.success
    event = next(e for e in result.all_events if e.event_type_value == "STEP_OUTPUT")
    return {k: getattr(v, "value", v) for k, v in event.step_output_data.metadata.items()}
