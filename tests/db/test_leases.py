"""One ingest of an object at a time: the lease in `ingest_leases`, on both databases."""

from __future__ import annotations

import subprocess
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from catalog_pipeline.db.failures import LeaseHeldError, acquire_lease, release_lease
from catalog_pipeline.db.tables import ingest_leases, utcnow

KEY = "shop_2026-11-09T06-00-00.csv"


def _holder(engine) -> str | None:
    with engine.connect() as connection:
        return connection.execute(
            select(ingest_leases.c.run_id).where(ingest_leases.c.object_key == KEY)
        ).scalar_one_or_none()


def test_a_live_holder_keeps_the_lease_and_the_refusal_says_until_when(engine):
    acquire_lease(engine, KEY, "run-a")
    acquire_lease(engine, KEY, "run-a")  # its own lease again: fine
    with pytest.raises(LeaseHeldError) as caught:
        acquire_lease(engine, KEY, "run-b", holder_alive=lambda run_id: True)
    assert "already being ingested by run run-a" in str(caught.value)
    assert "its lease expires at" in str(caught.value)
    assert _holder(engine) == "run-a"
    release_lease(engine, KEY, ["run-a"])
    acquire_lease(engine, KEY, "run-b")
    assert _holder(engine) == "run-b"


def test_a_holder_dagster_says_has_ended_gives_the_lease_up(engine):
    acquire_lease(engine, KEY, "run-a")
    acquire_lease(engine, KEY, "run-b", holder_alive=lambda run_id: False)
    assert _holder(engine) == "run-b"


def test_an_expired_lease_is_free(engine):
    acquire_lease(engine, KEY, "run-a")
    with engine.begin() as connection:
        connection.execute(update(ingest_leases).values(expires_at=utcnow() - timedelta(seconds=1)))
    acquire_lease(engine, KEY, "run-b")
    assert _holder(engine) == "run-b"


def test_a_holder_unknown_to_dagster_is_free_once_its_process_is_gone(engine):
    """`catalog-pipeline` runs in process on an ephemeral instance: when that process was
    killed, the next one takes the lease at once instead of waiting for it to expire."""
    acquire_lease(engine, KEY, "cli-run")
    with pytest.raises(LeaseHeldError):  # this very process holds it: alive
        acquire_lease(engine, KEY, "next-run", holder_alive=lambda run_id: None)
    dead = subprocess.Popen(["true"])
    dead.wait()
    with engine.begin() as connection:
        connection.execute(update(ingest_leases).values(holder_pid=dead.pid))
    acquire_lease(engine, KEY, "next-run", holder_alive=lambda run_id: None)
    assert _holder(engine) == "next-run"
