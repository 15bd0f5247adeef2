"""`item_classifications` through real Dagster runs on SQLite and Postgres: idempotent re-runs,
exactly the changed item reclassified, `force` and `limit`, the catalog-wide job, the
`openai` classifier against a local chat-completions server, failure isolation from the
ingest run, the automation condition and the `classifier` pool limit."""

from __future__ import annotations

import csv
import io

import dagster as dg
import pytest
from sqlalchemy import Engine, select

from catalog_pipeline.assets.classifications import (
    CLASSIFIER_POOL,
    ITEM_CLASSIFICATIONS,
    RECLASSIFY_JOB,
    item_classifications,
)
from catalog_pipeline.assets.ingest import CATALOG_ITEMS
from catalog_pipeline.assets.partitions import partition_key_for, source_csvs
from catalog_pipeline.core.classification import KeywordClassifier, classifier_key
from catalog_pipeline.db.classifications import count_items, iter_items, store_classifications
from catalog_pipeline.db.tables import catalog_items
from catalog_pipeline.db.tables import item_classifications as results_table
from catalog_pipeline.definitions import build_definitions
from catalog_pipeline.ingest import ingest_object
from catalog_pipeline.jobs import INGEST_JOB
from catalog_pipeline.resources.catalog import BucketResource, CatalogDatabase, IngestSettings
from catalog_pipeline.resources.classifier import ClassifierResource
from catalog_pipeline.sensors.pools import POOL_LIMITS, pool_limits_sensor
from tests.chat_server import ChatServer

KEYWORD = f"keyword@{KeywordClassifier().version}"
PRODUCTS = [
    ("Nordwand Trailhead 2 dome tent", "Nordwand", "outdoor/tents", "Two doors."),
    ("Ascent 45 backpack", "Kestrel", "outdoor/backpacks", "Trekking backpack."),
    ("Down sleeping bag -10", "Fjällgrip", "", "Mummy sleeping bag."),
    ("Titanium camping stove", "Kestrel", "Camp kitchen", "Canister stove."),
    ("Rain shell jacket", "Kestrel", "Men > Jackets", "Waterproof hard shell."),
    ("Hiking boot mid", "Nordwand", "", "Waterproof hiking boot."),
    ("Wireless headphones", "Sonora", "Audio", "Noise cancelling."),
    ("Mirrorless camera body", "東京Audio", "Cameras", "Full frame."),
    ("Midnight Harbour vinyl LP", "Sonora Records", "Music > Vinyl", "180 g reissue."),
    ("A Winter in the Fjords", "Ülla Press", "Books", "A novel, paperback."),
    ("Garden hose 25 m", "Bright&Co", "Garden", "Kink-free hose."),
    ("Space Frontier (PS5)", "Bright&Co", "Video games", "Open-world game."),
]
KEY = "shop [eu]_2026-11-01T06-00-00.csv"
NEWER_KEY = "shop [eu]_2026-11-08T06-00-00.csv"
OTHER_KEY = "other_2026-11-02T06-00-00.csv"


def csv_bytes(products, prefix: str = "P", changed: dict[int, str] | None = None) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["sku", "name", "brand", "category", "description", "url"])
    for index, (name, brand, category, description) in enumerate(products):
        description = (changed or {}).get(index, description)
        url = f"https://shop.example.com/p/{index}"
        writer.writerow([f"{prefix}-{index:03d}", name, brand, category, description, url])
    return out.getvalue().encode()


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def ingest(local_bucket, engine: Engine, instance: dg.DagsterInstance, key: str, data: bytes):
    """The core ingest path (fast); the partition is registered on the instance."""
    local_bucket.put(key, data)
    ingest_object(local_bucket, engine, key, chunk_bytes=1024)
    instance.add_dynamic_partitions(source_csvs.name, [partition_key_for(key)])


def classify(
    engine: Engine,
    instance: dg.DagsterInstance,
    key: str,
    classifier: ClassifierResource | None = None,
    **config,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [item_classifications],
        partition_key=partition_key_for(key),
        instance=instance,
        resources={
            "catalog_db": CatalogDatabase(url=url_of(engine)),
            "classifier": classifier or ClassifierResource(),
        },
        run_config={"ops": {"item_classifications": {"config": config}}} if config else None,
        raise_on_error=False,
    )


def metadata(result: dg.ExecuteInProcessResult) -> dict:
    materialization = result.asset_materializations_for_node("item_classifications")[0]
    return {
        name: getattr(value, "value", value) for name, value in materialization.metadata.items()
    }


def op_metadata(result: dg.ExecuteInProcessResult) -> dict:
    event = next(e for e in result.all_events if e.event_type_value == "STEP_OUTPUT")
    return {k: getattr(v, "value", v) for k, v in event.step_output_data.metadata.items()}


def stored(engine: Engine, classifier: str = KEYWORD) -> dict[str, tuple]:
    """sku -> (category, confidence, input_hash == content_hash, classified_at)."""
    query = (
        select(
            catalog_items.c.sku,
            results_table.c.category,
            results_table.c.confidence,
            results_table.c.input_hash == catalog_items.c.content_hash,
            results_table.c.classified_at,
        )
        .join(catalog_items, catalog_items.c.id == results_table.c.item_id)
        .where(results_table.c.classifier == classifier)
    )
    with engine.connect() as connection:
        return {row[0]: tuple(row[1:]) for row in connection.execute(query)}


def test_twice_classifies_nothing_the_second_time(engine, local_bucket):
    with dg.instance_for_test() as instance:
        ingest(local_bucket, engine, instance, KEY, csv_bytes(PRODUCTS))
        first = classify(engine, instance, KEY)
        after_first = stored(engine)
        second = classify(engine, instance, KEY)
    assert first.success and second.success
    one, two = metadata(first), metadata(second)
    assert (one["classified"], one["skipped"], one["failed"]) == (len(PRODUCTS), 0, 0)
    assert (two["classified"], two["skipped"], two["failed"]) == (0, len(PRODUCTS), 0)
    assert stored(engine) == after_first  # not even classified_at moved
    assert one["classifier"] == KEYWORD and one["dagster/row_count"] == len(PRODUCTS)
    categories = {sku: row[0] for sku, row in after_first.items()}
    assert categories["P-000"] == "outdoor/tents" and categories["P-008"] == "media/music"
    assert categories["P-010"] == "unclassified"
    assert all(row[2] for row in after_first.values())  # input_hash is the content hash
    table = {r.data["category"]: r.data["items"] for r in two["distribution"].records}
    assert sum(table.values()) == len(PRODUCTS) and table["unclassified"] == 1


def test_a_changed_description_reclassifies_exactly_that_item(engine, local_bucket):
    with dg.instance_for_test() as instance:
        ingest(local_bucket, engine, instance, KEY, csv_bytes(PRODUCTS))
        assert classify(engine, instance, KEY).success
        before = stored(engine)
        # A newer scrape: the same items, one description rewritten.
        changed = {2: "Mummy sleeping bag, now with a longer zip."}
        ingest(local_bucket, engine, instance, NEWER_KEY, csv_bytes(PRODUCTS, changed=changed))
        result = classify(engine, instance, NEWER_KEY)
        after = stored(engine)
    values = metadata(result)
    assert (values["classified"], values["skipped"]) == (1, len(PRODUCTS) - 1)
    assert [sku for sku in after if after[sku] != before[sku]] == ["P-002"]
    assert after["P-002"][2]  # stored with the hash of the new description


def test_force_reclassifies_every_item_and_limit_bounds_a_run(engine, local_bucket):
    with dg.instance_for_test() as instance:
        ingest(local_bucket, engine, instance, KEY, csv_bytes(PRODUCTS))
        limited = metadata(classify(engine, instance, KEY, limit=5))
        assert (limited["classified"], limited["deferred"]) == (5, len(PRODUCTS) - 5)
        assert sorted(stored(engine)) == [f"P-{i:03d}" for i in range(5)]  # in item order
        rest = metadata(classify(engine, instance, KEY))
        assert (rest["classified"], rest["skipped"], rest["deferred"]) == (7, 5, 0)
        before = stored(engine)
        forced = metadata(classify(engine, instance, KEY, force=True))
        assert (forced["classified"], forced["skipped"]) == (len(PRODUCTS), 0)
        after = stored(engine)
        assert all(after[sku][3] != before[sku][3] for sku in before)  # all written again
        assert {s: r[:3] for s, r in after.items()} == {s: r[:3] for s, r in before.items()}
        capped = metadata(classify(engine, instance, KEY, force=True, limit=2))
        assert (capped["classified"], capped["deferred"]) == (2, len(PRODUCTS) - 2)
        nothing = metadata(classify(engine, instance, KEY, limit=0))
        assert nothing["classified"] == 0


def test_a_partition_classifies_only_the_items_its_file_touched(sqlite_engine, local_bucket):
    with dg.instance_for_test() as instance:
        ingest(local_bucket, sqlite_engine, instance, KEY, csv_bytes(PRODUCTS[:4]))
        ingest(local_bucket, sqlite_engine, instance, OTHER_KEY, csv_bytes(PRODUCTS, "Q"))
        values = metadata(classify(sqlite_engine, instance, KEY))
    assert values["items"] == 4 and sorted(stored(sqlite_engine)) == [
        "P-000",
        "P-001",
        "P-002",
        "P-003",
    ]


def test_the_catalog_wide_job_classifies_everything_bounded_by_limit(engine, local_bucket):
    resources = {
        "catalog_db": CatalogDatabase(url=url_of(engine)),
        "classifier": ClassifierResource(),
    }
    job = build_definitions(resources).resolve_job_def(RECLASSIFY_JOB)
    with dg.instance_for_test() as instance:
        ingest(local_bucket, engine, instance, KEY, csv_bytes(PRODUCTS))
        ingest(local_bucket, engine, instance, OTHER_KEY, csv_bytes(PRODUCTS, "Q"))
        config = {"ops": {"reclassify_catalog": {"config": {"limit": 15}}}}
        runs = [job.execute_in_process(run_config=config, instance=instance) for _ in range(3)]
    outputs = [op_metadata(run) for run in runs]
    assert [o["classified"] for o in outputs] == [15, 9, 0]
    assert [o["deferred"] for o in outputs] == [9, 0, 0]
    assert len(stored(engine)) == 2 * len(PRODUCTS)


def test_switching_classifiers_keeps_results_apart(sqlite_engine, local_bucket):
    with dg.instance_for_test() as instance, ChatServer() as server:
        ingest(local_bucket, sqlite_engine, instance, KEY, csv_bytes(PRODUCTS))
        assert classify(sqlite_engine, instance, KEY).success
        openai = ClassifierResource(kind="openai", openai_base_url=server.base_url)
        values = metadata(classify(sqlite_engine, instance, KEY, openai))
    assert values["classified"] == len(PRODUCTS)
    key = values["classifier"]
    assert key.startswith("openai@gpt-4o-mini/") and key != KEYWORD
    assert len(stored(sqlite_engine)) == len(stored(sqlite_engine, key)) == len(PRODUCTS)


def openai_resource(server: ChatServer, **options) -> ClassifierResource:
    settings = {"batch_size": 5, "max_retries": 2, "backoff_seconds": 0.05} | options
    return ClassifierResource(
        kind="openai", openai_base_url=server.base_url, openai_model="test-model", **settings
    )


def test_openai_answers_are_stored_and_bad_ones_are_failed_not_stored(sqlite_engine, local_bucket):
    def answer(item: dict) -> dict:
        name = item["name"]
        if "hose" in name:
            return {"id": item["id"], "category": "garden/hoses", "confidence": 0.8}
        if "boot" in name:
            return {"id": item["id"], "category": "apparel/shoes", "confidence": 3}
        return {"id": item["id"], "category": "media/books", "confidence": 0.7}

    with dg.instance_for_test() as instance, ChatServer(answer) as server:
        ingest(local_bucket, sqlite_engine, instance, KEY, csv_bytes(PRODUCTS))
        resource = openai_resource(server)
        server.script = [(200, b"this is not JSON", {})]  # the first batch of 5: all fail
        first = classify(sqlite_engine, instance, KEY, resource)
        key = metadata(first)["classifier"]
        after_first = stored(sqlite_engine, key)
        server.answer = lambda item: {"id": item["id"], "category": "media/games", "confidence": 1}
        second = classify(sqlite_engine, instance, KEY, resource)
    one = metadata(first)
    assert first.success
    # Batch 1 (P-000..P-004) malformed; batch 2 has the boot (confidence 3); batch 3 the hose.
    assert (one["classified"], one["failed"]) == (len(PRODUCTS) - 7, 7)
    assert sorted(after_first) == ["P-006", "P-007", "P-008", "P-009", "P-011"]
    assert {row[0] for row in after_first.values()} == {"media/books"}
    assert "garden/hoses" in one["failures"]["P-010"]
    assert one["failures"]["P-000"] == "malformed answer: response is not JSON"
    assert "outside 0..1" in one["failures"]["P-005"]
    assert one["requests"] == 3
    # The next run asks only about the items that failed, and stores them now.
    two = metadata(second)
    assert (two["classified"], two["skipped"], two["failed"]) == (7, 5, 0)
    assert len(server.items_asked()) == len(PRODUCTS) + 7


def test_openai_429_then_200_succeeds_after_backoff(sqlite_engine, local_bucket):
    with dg.instance_for_test() as instance, ChatServer() as server:
        ingest(local_bucket, sqlite_engine, instance, KEY, csv_bytes(PRODUCTS))
        server.script = [(429, b'{"error": "rate limited"}', {"Retry-After": "0"})]
        result = classify(sqlite_engine, instance, KEY, openai_resource(server, batch_size=20))
    values = metadata(result)
    assert result.success and server.statuses == [429, 200]
    assert (values["classified"], values["failed"], values["requests"]) == (len(PRODUCTS), 0, 2)


def test_a_classifier_that_keeps_failing_fails_only_the_classification_run(
    sqlite_engine, local_bucket, tmp_path
):
    local_bucket.put(KEY, csv_bytes(PRODUCTS))
    with ChatServer() as server:
        server.script = [(503, b"overloaded", {})] * 50
        defs = build_definitions(
            {
                "bucket": BucketResource(url=local_bucket.url),
                "catalog_db": CatalogDatabase(url=url_of(sqlite_engine)),
                "ingest_settings": IngestSettings(chunk_bytes=1024),
                "classifier": openai_resource(server),
            }
        )
        with dg.instance_for_test() as instance:
            partition = partition_key_for(KEY)
            instance.add_dynamic_partitions(source_csvs.name, [partition])
            before = dg.evaluate_automation_conditions(defs=defs, instance=instance)
            ingest_run = defs.resolve_job_def(INGEST_JOB).execute_in_process(
                partition_key=partition, instance=instance
            )
            # The automation condition asks for the classification, in a run of its own.
            evaluation = dg.evaluate_automation_conditions(
                defs=defs, instance=instance, cursor=before.cursor
            )
            assert evaluation.get_requested_partitions(ITEM_CLASSIFICATIONS) == {partition}
            assert evaluation.get_num_requested(CATALOG_ITEMS) == 0  # ingest is not re-run
            failed = classify(sqlite_engine, instance, KEY, openai_resource(server))
            statuses = {
                run_id: instance.get_run_by_id(run_id).status
                for run_id in (ingest_run.run_id, failed.run_id)
            }
    assert ingest_run.success and not failed.success
    assert statuses == {
        ingest_run.run_id: dg.DagsterRunStatus.SUCCESS,
        failed.run_id: dg.DagsterRunStatus.FAILURE,
    }
    failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.message
    assert "failed 3 times; last: HTTP 503" in message and KEY in message
    assert len(server.requests) == 3  # no retry of the whole step on top of the client's
    assert stored(sqlite_engine, "openai@test-model/p1/2026.1") == {}
    with sqlite_engine.connect() as connection:
        assert len(connection.execute(select(catalog_items.c.id)).all()) == len(PRODUCTS)


def test_an_unknown_classifier_kind_fails_with_a_clear_error(sqlite_engine, local_bucket):
    with dg.instance_for_test() as instance:
        ingest(local_bucket, sqlite_engine, instance, KEY, csv_bytes(PRODUCTS))
        result = classify(sqlite_engine, instance, KEY, ClassifierResource(kind="llama"))
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "CLASSIFIER='llama': expected one of keyword, openai" in (
        failure.step_failure_data.error.message
    )


def test_classification_is_requested_after_each_ingest_and_not_again_without_one():
    defs = build_definitions()
    partition = partition_key_for(KEY)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(source_csvs.name, [partition])
        first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert first.get_num_requested(ITEM_CLASSIFICATIONS) == 0  # catalog_items missing
        instance.report_runless_asset_event(
            dg.AssetMaterialization(CATALOG_ITEMS, partition=partition)
        )
        after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
        assert after.get_num_requested(ITEM_CLASSIFICATIONS) == 1
        assert after.get_requested_partitions(ITEM_CLASSIFICATIONS) == {partition}
        assert after.get_num_requested(CATALOG_ITEMS) == 0
        instance.report_runless_asset_event(
            dg.AssetMaterialization(ITEM_CLASSIFICATIONS, partition=partition)
        )
        quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after.cursor)
        assert quiet.get_num_requested(ITEM_CLASSIFICATIONS) == 0


def test_classification_runs_in_the_classifier_pool_and_the_sensor_sets_its_limit_to_one():
    defs = build_definitions()
    node = defs.resolve_assets_def(ITEM_CLASSIFICATIONS).node_def
    assert node.pool == CLASSIFIER_POOL
    assert defs.resolve_job_def(RECLASSIFY_JOB).graph.node_defs[0].pool == CLASSIFIER_POOL
    assert POOL_LIMITS == {CLASSIFIER_POOL: 1, "embedder": 1, "stats_provider": 1}
    sensor = defs.resolve_sensor_def("pool_limits_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    local = {"concurrency": {"pools": {"default_limit": 2, "granularity": "op"}}}
    with dg.instance_for_test(overrides=local) as instance:
        storage = instance.event_log_storage
        # A step already initialised the pool from the default (2): the sensor fixes it.
        storage.initialize_concurrency_limit_to_default(CLASSIFIER_POOL)
        assert storage.get_concurrency_info(CLASSIFIER_POOL).slot_count == 2
        result = pool_limits_sensor(dg.build_sensor_context(instance=instance))
        assert "classifier=1" in result.skip_message
        assert storage.get_concurrency_info(CLASSIFIER_POOL).slot_count == 1
        assert storage.get_concurrency_info("stats_provider").slot_count == 1
        again = pool_limits_sensor(dg.build_sensor_context(instance=instance))
        assert again.skip_message == "pool limits already set"
        # An operator's explicit limit is never overridden.
        storage.set_concurrency_slots(CLASSIFIER_POOL, 3)
        pool_limits_sensor(dg.build_sensor_context(instance=instance))
        assert storage.get_concurrency_info(CLASSIFIER_POOL).slot_count == 3


@pytest.mark.parametrize("kind", ["keyword", "openai"])
def test_the_classifier_key_is_name_at_version(kind):
    classifier = ClassifierResource(kind=kind).build()
    assert classifier_key(classifier).startswith(f"{kind}@")


def test_items_are_read_in_pages_by_id_undisturbed_by_results_stored_meanwhile(
    engine, local_bucket
):
    with dg.instance_for_test() as instance:
        ingest(local_bucket, engine, instance, KEY, csv_bytes(PRODUCTS))
    whole = [item.sku for item in iter_items(engine, KEYWORD, KEY)]
    assert whole == [f"P-{i:03d}" for i in range(len(PRODUCTS))]
    assert [i.sku for i in iter_items(engine, KEYWORD, KEY, limit=7, page_size=3)] == whole[:7]
    classifier = KeywordClassifier()
    seen = []
    for item in iter_items(engine, KEYWORD, KEY, page_size=5):
        seen.append(item.sku)
        store_classifications(engine, KEYWORD, [item], classifier.classify([item]))
    assert seen == whole
    assert list(iter_items(engine, KEYWORD, KEY, page_size=5)) == []
    assert count_items(engine, KEYWORD, KEY).pending == 0
    assert len(list(iter_items(engine, KEYWORD, None, force=True, page_size=5))) == len(whole)
