"""The work of assets and schedules run from `catalog-pipeline` after a real ingest:
`retention` (and its dry run), `classify` (offline, and against a local OpenAI-compatible
server), `playcounts backfill` (its cost preview spends nothing; the pass stays within the
filter and the quota), and the progress helper all of them use."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

from sqlalchemy import Engine, func, select, update

from catalog_pipeline.core.bucket import LocalBucket
from catalog_pipeline.core.samples import sample_csv
from catalog_pipeline.db.tables import (
    catalog_items,
    invalid_item_logs,
    item_classifications,
    provider_calls,
    utcnow,
)
from catalog_pipeline.progress import Progress
from tests.chat_server import ChatServer
from tests.helpers import dump
from tests.playcount_support import KEY, catalog_csv, history, scripted_provider
from tests.test_cli import cli, json_output

NO_INSTANCE = {"DAGSTER_HOME": ""}


def last_json(result: subprocess.CompletedProcess) -> dict:
    """Exit 0, no traceback, and exactly one JSON line on stdout."""
    assert result.returncode == 0, result.stderr[-3000:]
    return json_output(result)


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def ingest(tmp_path: Path, engine: Engine, objects: dict[str, bytes]) -> None:
    bucket = LocalBucket(tmp_path / "bucket")
    for key, data in objects.items():
        bucket.put(key, data)
    arguments = ("--bucket", bucket.url, "--database-url", url_of(engine))
    result = cli("ingest", "--json", *arguments, env=NO_INSTANCE)
    assert {file["status"] for file in last_json(result)["files"]} == {"completed"}


def count(engine: Engine, table) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar_one()


def test_retention_dry_run_deletes_nothing_and_counts_what_the_run_deletes(
    tmp_path: Path, engine: Engine
):
    ingest(tmp_path, engine, {"shop_2026-11-01T06-00-00.csv": sample_csv(400, seed=11)})
    invalid = count(engine, invalid_item_logs)
    assert invalid > 4
    # Half the log is older than the 90 days the retention job keeps.
    with engine.begin() as connection:
        old_ids = connection.execute(
            select(invalid_item_logs.c.id).order_by(invalid_item_logs.c.id).limit(invalid // 2)
        ).scalars()
        connection.execute(
            update(invalid_item_logs)
            .where(invalid_item_logs.c.id.in_(list(old_ids)))
            .values(created_at=utcnow().replace(year=utcnow().year - 1))
        )
    before = dump(engine)
    database = ("--database-url", url_of(engine))

    preview = last_json(cli("retention", "--dry-run", "--json", *database, env=NO_INSTANCE))
    logs = {entry["table"]: entry for entry in preview["tables"]}["invalid_item_logs"]
    assert preview["dry_run"] is True and logs["days"] == 90
    assert logs["expired"] == logs["would_delete"] == invalid // 2
    assert logs["deleted"] == 0 and logs["capped"] is False
    assert dump(engine) == before  # nothing deleted

    human = cli("retention", "--dry-run", *database, env=NO_INSTANCE)
    assert f"invalid_item_logs: {invalid // 2:,} rows older than 90 days" in human.stdout
    assert dump(engine) == before

    done = last_json(cli("retention", "--json", *database, env=NO_INSTANCE))
    deleted = {entry["table"]: entry for entry in done["tables"]}["invalid_item_logs"]
    assert deleted["deleted"] == logs["would_delete"]
    assert count(engine, invalid_item_logs) == invalid - invalid // 2
    again = last_json(cli("retention", "--dry-run", "--json", *database, env=NO_INSTANCE))
    assert [entry["expired"] for entry in again["tables"]] == [0, 0]


def test_classify_offline_classifies_every_item_once(tmp_path: Path, sqlite_engine: Engine):
    ingest(tmp_path, sqlite_engine, {"shop_2026-11-01T06-00-00.csv": sample_csv(300, seed=12)})
    items = count(sqlite_engine, catalog_items)
    database = ("--database-url", url_of(sqlite_engine))

    limited = cli("classify", "--limit", "100", "--json", *database, env=NO_INSTANCE)
    first = last_json(limited)
    assert limited.stderr == ""  # --json off a terminal: no progress, no extra line
    assert first["classifier"].startswith("keyword@")
    assert (first["classified"], first["deferred"], first["items"]) == (100, items - 100, items)
    rest = last_json(cli("classify", "--json", *database, env=NO_INSTANCE))
    assert (rest["classified"], rest["skipped"], rest["failed"]) == (items - 100, 100, 0)
    assert count(sqlite_engine, item_classifications) == items
    assert sum(entry["items"] for entry in rest["distribution"]) == items

    human = cli("classify", *database, env=NO_INSTANCE)
    assert human.returncode == 0, human.stderr
    assert f"0 classified, {items:,} skipped (unchanged), 0 failed" in human.stdout
    status = last_json(cli("status", "--json", *database, env=NO_INSTANCE))
    assert status["queues"]["classification"]["pending"] == 0


def test_classify_with_an_openai_compatible_server_on_postgres(
    tmp_path: Path, postgres_engine: Engine
):
    ingest(tmp_path, postgres_engine, {"shop_2026-11-01T06-00-00.csv": sample_csv(120, seed=13)})
    items = count(postgres_engine, catalog_items)
    with ChatServer() as server:
        environment = {
            **NO_INSTANCE,
            "CLASSIFIER": "openai",
            "CLASSIFIER_OPENAI_BASE_URL": server.base_url,
            "CLASSIFIER_OPENAI_API_KEY": "test-key",
            "CLASSIFIER_BATCH_SIZE": "25",
        }
        database = ("--database-url", url_of(postgres_engine))
        summary = last_json(cli("classify", "--json", *database, env=environment))
        assert summary["classifier"].startswith("openai@")
        assert (summary["classified"], summary["failed"]) == (items, 0)
        assert len(server.items_asked()) == items
        assert len(server.requests) == -(-items // 25)
        again = last_json(cli("classify", "--json", *database, env=environment))
        assert (again["classified"], again["skipped"]) == (0, items)
        assert len(server.items_asked()) == items  # nothing paid for twice
    with postgres_engine.connect() as connection:
        stored = connection.execute(
            select(func.count()).where(item_classifications.c.classifier == summary["classifier"])
        ).scalar_one()
    assert stored == items


SONGS = {
    "radio_2026-11-01T06-00-00.csv": [(f"r{i}", 1000 - i, f"ISRC-R{i}") for i in range(5)],
    "store_2026-11-01T06-00-00.csv": [
        *[(f"s{i}", 500 - i, f"ISRC-S{i}") for i in range(3)],
        ("s-no-id", 10, None),
    ],
}


def test_playcounts_backfill_previews_the_cost_and_stays_in_its_filter_and_quota(
    tmp_path: Path, engine: Engine
):
    ingest(tmp_path, engine, {key: catalog_csv(rows) for key, rows in SONGS.items()})
    database = ("--database-url", url_of(engine))
    with scripted_provider() as provider:
        for rows in SONGS.values():
            for _, _, external_id in rows:
                if external_id:
                    provider.script(external_id, history(1, 2, 3))
        environment = {
            **NO_INSTANCE,
            "PLAYCOUNT_API_URL": provider.url,
            "PLAYCOUNT_API_KEY": KEY,
            "PLAYCOUNT_DAILY_QUOTA": "4",
        }
        before = dump(engine)
        preview = last_json(
            cli("playcounts", "backfill", "--dry-run", "--json", *database, env=environment)
        )
        assert preview["dry_run"] is True
        cost = preview["preview"]
        assert (cost["items"], cost["new"], cost["calls_needed"]) == (8, 8, 8)
        assert (cost["daily_quota"], cost["quota_used_today"], cost["quota_left_today"]) == (
            4,
            0,
            4,
        )
        assert cost["calls_this_run"] == 4 and cost["drain_skipped"] is None
        human = cli("playcounts", "backfill", "--dry-run", *database, env=environment)
        assert "items to query:     8" in human.stdout
        assert "calls this run:     4 (4 wait for the next days' quota)" in human.stdout
        assert sum(provider.calls.values()) == 0  # a preview spends nothing
        assert dump(engine) == before

        narrowed = last_json(
            cli(
                "playcounts",
                *("backfill", "--source", "store", "--since", "2020-01-01", "--dry-run"),
                "--json",
                *database,
                env=environment,
            )
        )
        assert narrowed["preview"]["items"] == 3
        future = cli(
            "playcounts",
            *("backfill", "--since", "2999-01-01", "--dry-run", "--json"),
            *database,
            env=environment,
        )
        assert last_json(future)["preview"]["items"] == 0

        # Without a provider, a pass only queues: the radio's songs wait, ranked first.
        no_provider = {**NO_INSTANCE, "PLAYCOUNT_DAILY_QUOTA": "4"}
        queued = last_json(
            cli("playcounts", "backfill", "--source", "radio", "--json", *database, env=no_provider)
        )["result"]
        assert (queued["enqueued"], queued["calls"]) == (5, 0)
        assert queued["stopped_by"] == "not_configured" and queued["queue"]["pending"] == 5

        run = last_json(
            cli("playcounts", "backfill", "--source", "store", "--json", *database, env=environment)
        )
        result = run["result"]
        assert (result["enqueued"], result["calls"], result["readings"]) == (3, 3, 9)
        assert result["outcomes"]["ok"] == 3 and result["stopped_by"] == "queue_empty"
        assert set(provider.calls) == {"ISRC-S0", "ISRC-S1", "ISRC-S2"}  # never the radio's
        assert result["queue"] == {"pending": 5, "in_progress": 0, "done": 3, "failed": 0}

        # The whole catalog next: one unit of today's quota is left.
        rest = last_json(cli("playcounts", "backfill", "--json", *database, env=environment))
        assert rest["preview"]["quota_left_today"] == 1 and rest["preview"]["items"] == 5
        assert (rest["result"]["calls"], rest["result"]["stopped_by"]) == (1, "quota")
        assert sum(provider.calls.values()) == 4 == count(engine, provider_calls)


def test_a_bad_since_is_a_usage_error(tmp_path: Path):
    result = cli("playcounts", "backfill", "--since", "yesterday", "--json", env=NO_INSTANCE)
    assert result.returncode == 2
    (line,) = result.stdout.splitlines()
    assert json.loads(line)["error"].startswith("--since 'yesterday' is not a date")
    assert "Traceback" not in result.stderr


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_elsewhere():
    terminal = _Terminal()
    with Progress("classify", 10, stream=terminal) as bar:
        bar.advance(4)
        bar.note("a line that stays")
    assert bar.terminal and "a line that stays" in terminal.getvalue()
    assert "\x1b[" in terminal.getvalue()  # drawn with control sequences

    plain = io.StringIO()
    with Progress("classify", 10, stream=plain, interval=0) as bar:
        bar.advance(4)
        bar.note("a line that stays")
    lines = plain.getvalue().splitlines()
    assert lines[0].startswith("classify: 4 items of 10 items (40 %), ") and "ETA" in lines[0]
    assert lines[1] == "a line that stays" and "\x1b" not in plain.getvalue()

    throttled = io.StringIO()
    with Progress("embed", 1000, stream=throttled, interval=60) as bar:
        for _ in range(1000):
            bar.advance(1)
    assert throttled.getvalue() == ""  # at most one line a minute here

    silent = io.StringIO()
    with Progress("embed", 10, stream=silent, enabled=False) as bar:
        bar.advance(10)
        bar.note("not shown")
    assert silent.getvalue() == ""


def test_a_negative_limit_is_a_usage_error(tmp_path: Path):
    result = cli("classify", "--limit", "-1", "--json", cwd=tmp_path, env=NO_INSTANCE)
    assert result.returncode == 2
    (line,) = result.stdout.splitlines()
    assert json.loads(line)["error"] == "--limit -1: give 0 or more"
