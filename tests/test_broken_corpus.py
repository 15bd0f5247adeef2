"""The committed corpus of broken and hostile files (`tests/corpus/broken/`), ingested
by `catalog-pipeline ingest --json` into SQLite and PostgreSQL: each file ends as
`expected.json` says (status, counts, invalid reasons, the rejection's reason), one bad
file never stops the others, and stderr holds no stack trace."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from catalog_pipeline.db.engine import make_engine
from catalog_pipeline.db.tables import invalid_item_logs, source_files
from tests.test_cli import cli

CORPUS = Path(__file__).parent / "corpus" / "broken"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())


def test_the_committed_corpus_is_what_its_generator_writes():
    spec = importlib.util.spec_from_file_location("generate", CORPUS / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    assert set(generate.CASES) == set(EXPECTED)
    for name, (data, outcome) in generate.CASES.items():
        assert (CORPUS / name).read_bytes() == data, name
        assert EXPECTED[name] == outcome, name


def _reasons(engine: Engine) -> dict[str, Counter]:
    query = select(source_files.c.object_key, invalid_item_logs.c.reasons).join(
        source_files, source_files.c.id == invalid_item_logs.c.source_file_id
    )
    found: dict[str, Counter] = {}
    with engine.connect() as connection:
        for key, reasons in connection.execute(query):
            found.setdefault(key, Counter()).update(json.loads(reasons))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_each_broken_file_ends_as_expected_and_the_good_ones_load(backend, tmp_path, request):
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    for name in EXPECTED:
        shutil.copy(CORPUS / name, bucket / name)
    if backend == "postgres":
        request.getfixturevalue("postgres_engine")  # a fresh database
        url = request.getfixturevalue("postgres_database")
    else:
        url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"

    result = cli(
        "ingest",
        "--json",
        "--bucket",
        f"file://{bucket}",
        "--database-url",
        url,
        "--chunk-bytes",
        "4KiB",
        cwd=tmp_path,
        env={"DAGSTER_HOME": ""},
    )

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    files = {entry["object_key"]: entry for entry in json.loads(result.stdout)["files"]}
    assert set(files) == set(EXPECTED)
    reasons = _reasons(make_engine(url))
    for name, expected in EXPECTED.items():
        found = files[name]
        assert found["status"] == expected["status"], (name, found)
        if expected["status"] == "rejected":
            assert expected["rejected_reason"] in found["rejected_reason"], (name, found)
            assert "Dagster" not in found["rejected_reason"]
            continue
        assert found["rows_valid"] == expected["rows_valid"], (name, found)
        assert found["rows_invalid"] == expected["rows_invalid"], (name, found)
        assert found["verified_row_count"] == found["rows_total"], (name, found)
        assert reasons.get(name, Counter()) == Counter(expected["reasons"]), name
