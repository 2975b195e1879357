"""One drain whose clock is an hour ahead (issue 24, scenario 5), against real Redis and Postgres.

Before: it left a seam note dated an hour ahead, and the next correct drains made no API call at
all (each waited for "a spacing after the last start"); and its snapshots were dated an hour
ahead, so correct fetches could not overwrite them for an hour. Now Postgres's clock dates
snapshots, and a seam note further ahead than a spacing and a margin is clamped.

The skewed drain runs in this process with `time.time()` an hour ahead (and its limiter's wall
clock with it); its successors run with the real clock. Nothing is judged by elapsed time: only
by what the drains did and what Postgres holds.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from coclib.queue import RefreshRequest
from coclib.ratelimit import RateLimiter
from coclib.settings import Settings
from tests.helpers import push, query
from worker.drain import RunSummary
from worker.runtime import Worker

HOUR = 3600.0
REAL_TIME = time.time


def req(i: int, tag: str = "#2PP") -> RefreshRequest:
    return RefreshRequest(f"r{i}", "player", tag, 1_700_000_000.0)


def run(settings: Settings, *, skew: float = 0.0, seconds: float = 15.0) -> RunSummary:
    """One drain in a fresh Worker, its wall clock `skew` seconds off."""

    async def go() -> RunSummary:
        worker = Worker(settings)
        worker.limiter = RateLimiter(settings.coc_reqs_per_sec, wall=lambda: REAL_TIME() + skew)
        try:
            return await worker.drain(seconds)
        finally:
            await worker.close()

    return asyncio.run(go())


def skewed_run(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> RunSummary:
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", lambda: REAL_TIME() + HOUR)
        return run(settings, skew=HOUR)


def test_a_drain_after_one_with_a_clock_an_hour_ahead_calls_the_api(
    settings, redis_client, simulator, monkeypatch
):
    push(redis_client, settings, req(0))
    ahead = skewed_run(settings, monkeypatch)
    assert ahead.api_requests == 1 and ahead.stopped == "queue_empty"

    push(redis_client, settings, *(req(n, f"#2P{c}") for n, c in enumerate("QRUV", start=1)))
    after = run(settings)

    # Before the clamp: 0 calls, stopped at the deadline, everything put back.
    assert after.stopped == "queue_empty"
    assert after.api_requests == 4 and after.counts.get("fetched") == 4


def test_snapshots_are_dated_by_postgres_whatever_the_worker_s_clock(
    settings, redis_client, database_url, simulator, monkeypatch
):
    push(redis_client, settings, req(0))
    skewed_run(settings, monkeypatch)
    [ahead] = query(
        database_url, "SELECT fetched_at, fetched_at <= now() AS past FROM players WHERE tag = '#2PP'"
    )
    # Before: dated an hour into Postgres's future.
    assert ahead["past"]

    push(redis_client, settings, req(1))
    assert run(settings).counts.get("fetched") == 1
    [correct] = query(database_url, "SELECT fetched_at FROM players WHERE tag = '#2PP'")
    assert correct["fetched_at"] > ahead["fetched_at"]  # the later fetch won


def test_a_snapshot_dated_in_the_future_is_overwritten(settings, redis_client, database_url, simulator):
    """One stored before the fix (or by hand) heals on the next fetch."""
    push(redis_client, settings, req(0))
    run(settings)
    query(database_url, "UPDATE players SET fetched_at = now() + interval '1 hour' RETURNING tag")
    push(redis_client, settings, req(1))
    run(settings)
    [row] = query(database_url, "SELECT fetched_at <= now() AS past FROM players WHERE tag = '#2PP'")
    assert row["past"]


def test_a_run_is_dated_by_postgres_whatever_the_worker_s_clock(
    settings, redis_client, database_url, simulator, monkeypatch
):
    """Else a run an hour ahead would be "the last run" for health for an hour."""
    push(redis_client, settings, req(0))
    ahead = skewed_run(settings, monkeypatch)
    correct = run(settings)
    rows = query(
        database_url,
        "SELECT run_id::text AS run_id, finished_at <= now() AS past FROM refresh_run_summaries"
        " ORDER BY finished_at DESC",
    )
    assert [r["run_id"] for r in rows] == [correct.run_id, ahead.run_id]  # the last run is the last
    assert all(r["past"] for r in rows)
