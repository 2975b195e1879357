"""Crash recovery meeting faults of its own (issue 24, scenarios 1 and 3).

1. Requests already settled, found again in the in-flight list (a run died between its commit
   and its acknowledgement), while Redis refuses exactly the acknowledgement: they must stay
   settled once, with no row after their settling row, and never be fetched again.
3. A Postgres fault (privileges revoked on a snapshot table, so every snapshot batch fails)
   in several runs in a row must not fail requests as `interrupted`: a run that lost Postgres
   did not die, and its requests are put back, not counted against.
"""

from __future__ import annotations

import asyncio
import uuid

import psycopg

from coclib.keys import QueueKeys
from coclib.queue import RefreshRequest, encode
from coclib.settings import Settings
from tests.helpers import drain, inflight_items, ledger, push, queue_items
from tests.invariants import fresh_tag
from tests.proxies import RedisCommandCutter
from worker.drain import DrainPolicy
from worker.runtime import Worker

CHECKED = DrainPolicy(checks=True)


def _requests(n: int, kind: str = "player") -> list[RefreshRequest]:
    return [RefreshRequest(uuid.uuid4().hex, kind, fresh_tag()) for _ in range(n)]


def _rows_after_settling(url: str, request_id: str) -> list[tuple[str, str | None]]:
    rows = [(r["outcome"], r["reason"]) for r in ledger(url, request_id)]
    settled_at = next((i for i, (outcome, _) in enumerate(rows) if outcome in ("fetched", "failed")), None)
    return [] if settled_at is None else rows[settled_at + 1 :]


def test_recovery_keeps_settled_items_settled_when_redis_refuses_the_ack(
    settings: Settings, worker_env, redis_client, database_url, simulator
):
    settled = _requests(10)
    push(redis_client, settings, *settled)
    assert drain(settings, policy=CHECKED).counts["fetched"] == 10
    calls_before = len(simulator.calls)
    # A run died between committing these and acknowledging them: back in the in-flight list,
    # with five requests it had taken and never attempted.
    fresh = _requests(5)
    inflight = QueueKeys(settings.queue.refresh_queue_key).inflight
    redis_client.rpush(inflight, *[encode(r) for r in settled + fresh])

    async def run_a():
        from coclib.queue import _ACK  # the acknowledgement script: the command Redis "loses"

        proxy = RedisCommandCutter(worker_env["REDIS_URL"], _ACK.encode()[:60])
        url = await proxy.start()
        worker = Worker(Settings.from_env({**worker_env, "REDIS_URL": url}), policy=CHECKED)
        try:
            return await worker.drain(30), proxy.cuts
        finally:
            await worker.close()
            await proxy.die()

    summary, cuts = asyncio.run(run_a())
    assert cuts >= 1, "the acknowledgement never reached the proxy"
    assert summary.stopped == "circuit_open" and summary.cause == "redis_unavailable", summary
    for request in settled:
        assert _rows_after_settling(database_url, request.id) == [], request.id

    summary = drain(settings, policy=CHECKED)  # Redis whole again: recovery acknowledges them
    assert summary.stopped == "queue_empty", summary
    for request in settled:
        rows = [r["outcome"] for r in ledger(database_url, request.id)]
        assert rows == ["attempted", "fetched"], (request.id, rows)
    for request in fresh:
        assert [r["outcome"] for r in ledger(database_url, request.id)][-1] == "fetched"
    assert len(simulator.calls) == calls_before + len(fresh), "a settled request was fetched again"
    assert queue_items(redis_client, settings) == [] and inflight_items(redis_client, settings) == []


def test_postgres_refusing_snapshots_fails_no_request_as_interrupted(
    settings: Settings, worker_env, redis_client, database_url, simulator
):
    requests = _requests(6)
    push(redis_client, settings, *requests)
    role = f"coc_restricted_{uuid.uuid4().hex[:12]}"  # roles are cluster-wide: one per test
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        conn.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        conn.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role}")
        conn.execute(f"REVOKE INSERT, UPDATE ON players FROM {role}")
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    restricted_url = psycopg.conninfo.make_conninfo(**{**info, "user": role})
    restricted = Settings.from_env({**worker_env, "DATABASE_URL": restricted_url})
    try:
        for _ in range(3):  # more runs than interrupted_limit: each one's first batch fails
            summary = drain(restricted, policy=CHECKED)
            assert summary.stopped == "circuit_open" and summary.cause == "database_unavailable", summary
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f"GRANT INSERT, UPDATE ON players TO {role}")
    summary = drain(restricted, policy=CHECKED)
    assert summary.stopped == "queue_empty", summary
    for request in requests:
        outcomes = [(r["outcome"], r["reason"]) for r in ledger(database_url, request.id)]
        assert ("failed", "interrupted") not in outcomes, (request.id, outcomes)
        assert outcomes[-1] == ("fetched", None), (request.id, outcomes)
    assert queue_items(redis_client, settings) == [] and inflight_items(redis_client, settings) == []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")
