"""The failure ledger of `item_classifications` (`derivation_failures`), through real Dagster
runs on SQLite and Postgres against the local chat-completions server: an item that fails
`max_failures` times is skipped until its content changes or a run sets `retry_failed`, a
success clears it, a failed batch counts for each of its items, and the counts in the
metadata. Also the ledger helpers on their own."""

from __future__ import annotations

import csv
import io
import json

import dagster as dg
import pytest
from sqlalchemy import Engine, select

from catalog_pipeline.assets.classifications import item_classifications, reclassify_catalog_job
from catalog_pipeline.assets.partitions import partition_key_for, source_csvs
from catalog_pipeline.core.classification import KeywordClassifier
from catalog_pipeline.db.derivation_failures import (
    MAX_ERROR_CHARS,
    MAX_FAILURES_VARIABLE,
    blocked_item_ids,
    clear_failures,
    failure_counts,
    max_failures_setting,
    record_failures,
)
from catalog_pipeline.db.tables import catalog_items, derivation_failures
from catalog_pipeline.ingest import ingest_object
from catalog_pipeline.resources.catalog import CatalogDatabase
from catalog_pipeline.resources.classifier import ClassifierResource
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
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["sku", "name", "brand", "category", "description", "url"])
    for index, (name, brand, category, description) in enumerate(PRODUCTS):
        description = (changed or {}).get(index, description)
        url = f"https://shop.example.com/p/{index}"
        writer.writerow([f"P-{index:03d}", name, brand, category, description, url])
    return out.getvalue().encode()


def ingest(local_bucket, engine: Engine, instance: dg.DagsterInstance, key: str, data: bytes):
    local_bucket.put(key, data)
    ingest_object(local_bucket, engine, key, chunk_bytes=1024)
    instance.add_dynamic_partitions(source_csvs.name, [partition_key_for(key)])


def openai(server: ChatServer) -> ClassifierResource:
    return ClassifierResource(
        kind="openai",
        openai_base_url=server.base_url,
        openai_model="test-model",
        batch_size=3,
        max_retries=1,
        backoff_seconds=0.01,
    )


def classify(
    engine: Engine,
    instance: dg.DagsterInstance,
    key: str,
    classifier: ClassifierResource,
    **config,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [item_classifications],
        partition_key=partition_key_for(key),
        instance=instance,
        resources={
            "catalog_db": CatalogDatabase(url=engine.url.render_as_string(hide_password=False)),
            "classifier": classifier,
        },
        run_config={"ops": {"item_classifications": {"config": config}}} if config else None,
        raise_on_error=False,
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


def test_a_failed_batch_counts_for_each_of_its_items_and_the_run_still_fails(engine, local_bucket):
    with dg.instance_for_test() as instance, ChatServer() as server:
        ingest(local_bucket, engine, instance, KEY, csv_bytes())
        resource = openai(server)
        server.script = [(500, b'{"error": "internal"}', {})] * 2  # both tries of batch 1
        failed = classify(engine, instance, KEY, resource)
        recorded = ledger(engine)
        healed = metadata(classify(engine, instance, KEY, resource))
    assert not failed.success
    failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
    assert "failed 2 times; last: HTTP 500" in failure.step_failure_data.error.message
    failure_metadata = failure.step_failure_data.user_failure_data.metadata
    assert failure_metadata["classification_failures"].value == 3
    assert sorted(recorded) == ["P-000", "P-001", HOSE]  # the batch of 3 that failed
    for _, count, last_error, same_input, *_ in recorded.values():
        assert (count, same_input) == (1, True)
        assert "failed 2 times; last: HTTP 500" in last_error
    assert (healed["classified"], healed["total_classification_failures"]) == (6, 0)
    assert ledger(engine) == {}


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
