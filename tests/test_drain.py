"""The drain end to end: real Postgres and Redis, the simulator for the API."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from coclib.queue import RefreshRequest
from coclib.settings import Settings
from coclib.testing.simulator import max_calls_in_window, simulated_body
from tests.helpers import RecordingLimiter, drain, inflight_items, ledger, outcomes, push, query, queue_items
from worker.drain import DrainPolicy
from worker.runtime import Worker


def req(i: int | str, kind: str = "player", tag: str = "#2PP") -> RefreshRequest:
    return RefreshRequest(str(i), kind, tag, 1_700_000_000.0)


def test_valid_request_is_attempted_fetched_and_stored(settings, redis_client, database_url, simulator):
    push(
        redis_client,
        settings,
        req("a", "player", "#2PP"),
        req("b", "clan", "#8QU8J9LP"),
        req("c", "war", "#8QU8J9LP"),
    )

    summary = drain(settings)

    assert summary.stopped == "queue_empty"
    for request_id in "abc":
        assert outcomes(database_url, request_id) == [("attempted", None), ("fetched", None)]
    player = query(database_url, "SELECT * FROM players WHERE tag = '#2PP'")[0]
    assert player["data"]["tag"] == "#2PP"
    assert player["data"] == simulated_body("player", "#2PP")
    assert player["town_hall_level"] == player["data"]["townHallLevel"]
    assert not set(player["data"]) & {"status_code", "timestamp", "_response_retry"}
    assert query(database_url, "SELECT count(*) AS n FROM clans")[0]["n"] == 1
    assert query(database_url, "SELECT state FROM wars WHERE clan_tag = '#8QU8J9LP'")[0]["state"]
    assert queue_items(redis_client, settings) == [] and inflight_items(redis_client, settings) == []


def test_not_found_and_private_war_log_fail_once_and_are_not_retried(
    settings, redis_client, database_url, simulator
):
    simulator.not_found.add("#2PQ")
    simulator.private_war_log.add("#8QU8J9LP")
    push(redis_client, settings, req("gone", "player", "#2PQ"), req("private", "war", "#8QU8J9LP"))

    drain(settings)
    drain(settings)  # a second run finds nothing: failures are not requeued

    assert outcomes(database_url, "gone") == [("attempted", None), ("failed", "not_found")]
    assert outcomes(database_url, "private") == [("attempted", None), ("failed", "private_war_log")]
    assert len(simulator.calls) == 2
    assert queue_items(redis_client, settings) == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "invalid_request"),
        (b"\xff\xfe", "invalid_request"),
        (b"[1, 2]", "invalid_request"),
        (b'{"id": "x1", "kind": "village", "tag": "#2PP"}', "invalid_request"),
        (b'{"id": "x2", "kind": "player"}', "invalid_request"),
        (b'{"id": "x3", "kind": "player", "tag": 12}', "invalid_tag"),
        (b'{"id": "x4", "kind": "player", "tag": "#ABC!"}', "invalid_tag"),
        (b'{"id": "x5", "kind": "player", "tag": "#2PP", "pad": "' + b"x" * 5000 + b'"}', "invalid_request"),
    ],
)
def test_malformed_item_is_one_failed_row_and_no_api_call(
    payload, reason, settings, redis_client, database_url, simulator
):
    push(redis_client, settings, payload, req("ok"))

    summary = drain(settings)

    rows = [r for r in ledger(database_url) if r["request_id"] != "ok"]
    assert [(r["outcome"], r["reason"]) for r in rows] == [("failed", reason)]
    assert rows[0]["detail"] and len(rows[0]["detail"]) <= 1000
    assert [c.tag for c in simulator.calls] == ["#2PP"]  # only the good request reached the API
    assert summary.counts["failed"] == 1 and summary.counts["fetched"] == 1


def test_lower_case_and_letter_o_tags_are_normalised(settings, redis_client, database_url, simulator):
    push(redis_client, settings, b'{"id": "n1", "kind": "player", "tag": " 2poo "}')

    drain(settings)

    assert outcomes(database_url, "n1")[-1] == ("fetched", None)
    assert query(database_url, "SELECT tag FROM players")[0]["tag"] == "#2P00"


def test_maintenance_defers_everything_and_leaves_the_queue_as_it_was(
    settings, redis_client, database_url, simulator
):
    push(redis_client, settings, *[req(i, tag=t) for i, t in enumerate(["#2PP", "#2PQ", "#2PR", "#2PU"])])
    before = queue_items(redis_client, settings)
    simulator.maintenance = True

    summary = drain(settings)

    assert summary.stopped == "circuit_open" and summary.cause.startswith("maintenance")
    assert queue_items(redis_client, settings) == before
    assert inflight_items(redis_client, settings) == []
    terminal = [r for r in ledger(database_url) if r["outcome"] != "attempted"]
    assert terminal and {r["outcome"] for r in terminal} == {"deferred"}
    assert {r["reason"] for r in terminal} == {"maintenance"}


def test_bad_key_defers_and_leaves_the_queue_as_it_was(settings, redis_client, database_url, simulator):
    push(redis_client, settings, req(1), req(2, tag="#2PQ"))
    before = queue_items(redis_client, settings)
    simulator.tokens.clear()  # our token is no longer valid: 403 accessDenied

    summary = drain(settings)

    assert summary.stopped == "circuit_open"
    assert queue_items(redis_client, settings) == before
    assert "failed" not in {r["outcome"] for r in ledger(database_url)}


def test_dead_postgres_takes_nothing(worker_env, redis_client, simulator):
    settings = Settings.from_env({**worker_env, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"})
    push(redis_client, settings, req(1), req(2, tag="#2PQ"))
    before = queue_items(redis_client, settings)

    summary = drain(settings)

    assert summary.stopped == "circuit_open" and summary.cause == "database_unavailable"
    assert queue_items(redis_client, settings) == before
    assert simulator.calls == []


def test_server_errors_are_retried_then_failed(settings, redis_client, database_url, simulator):
    simulator.tag_status["#2PQ"] = 500
    push(redis_client, settings, req("flaky", tag="#2PQ"), *[req(i, tag="#2PP") for i in range(3)])

    drain(settings, policy=DrainPolicy(checks=True, max_tries=2, retry_backoff=0.05))

    rows = outcomes(database_url, "flaky")
    assert rows == [("attempted", None), ("attempted", None), ("failed", "upstream_error")]
    assert [c.status for c in simulator.calls if c.tag == "#2PQ"] == [500, 500]


def test_many_server_errors_in_a_row_open_the_circuit_and_fail_nothing(
    settings, redis_client, database_url, simulator
):
    simulator.server_error = True
    push(
        redis_client,
        settings,
        *[req(i, tag=t) for i, t in enumerate(["#2PP", "#2PQ", "#2PR", "#2PU", "#2PV"])],
    )
    before = queue_items(redis_client, settings)

    summary = drain(settings, policy=DrainPolicy(checks=True, transient_streak=3, retry_backoff=0.05))

    assert summary.stopped == "circuit_open" and summary.cause == "api_down"
    assert "failed" not in {r["outcome"] for r in ledger(database_url)}
    assert queue_items(redis_client, settings) == before


def test_deadline_skips_and_requeues_in_order(settings, redis_client, database_url, simulator):
    simulator.latency = (0.5, 0.5)
    push(redis_client, settings, *[req(i, tag="#2PP") for i in range(40)])
    before = queue_items(redis_client, settings)

    summary = drain(
        settings,
        seconds=2.0,
        policy=DrainPolicy(checks=True, finish_reserve=0.5, max_in_flight=4, dispatch_batch=1),
    )

    assert summary.stopped == "deadline"
    fetched = {r["request_id"] for r in ledger(database_url) if r["outcome"] == "fetched"}
    skipped = [r["request_id"] for r in ledger(database_url) if r["outcome"] == "skipped-deadline"]
    assert fetched and skipped
    # What is left is exactly the unfetched items, in their original order.
    assert queue_items(redis_client, settings) == [b for b in before if _id(b) not in fetched]
    assert set(skipped) <= {_id(b) for b in queue_items(redis_client, settings)}


def test_a_drain_never_exceeds_the_rate_limit(settings, redis_client, simulator):
    simulator.latency = (0.01, 0.05)
    push(redis_client, settings, *[req(i, tag="#2PP") for i in range(75)])

    async def go() -> RecordingLimiter:
        worker = Worker(settings, policy=DrainPolicy(checks=True))
        worker.limiter = RecordingLimiter(settings.api.coc_reqs_per_sec)  # before the API client binds to it
        try:
            await worker.drain(30)
        finally:
            await worker.close()
        return worker.limiter

    limiter = asyncio.run(go())

    # Judged on the limiter's own clock (arrival times add a loaded machine's jitter), and
    # every call the API saw went through it.
    assert len(simulator.calls) == 75 == len(limiter.starts)
    assert max_calls_in_window(limiter.starts, 1.0) <= 30


def test_lease_held_touches_nothing(settings, redis_client, simulator):
    from coclib.keys import QueueKeys

    redis_client.set(QueueKeys(settings.queue.refresh_queue_key).lease, "someone-else", px=10_000)
    push(redis_client, settings, req(1))

    summary = drain(settings)

    assert summary.stopped == "lease_held"
    assert len(queue_items(redis_client, settings)) == 1 and simulator.calls == []


def test_ledger_rejects_update_delete_and_truncate(settings, redis_client, database_url, simulator):
    push(redis_client, settings, req(1))
    drain(settings)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for statement in (
            "UPDATE refresh_ledger SET reason = 'x'",
            "DELETE FROM refresh_ledger",
            "TRUNCATE refresh_ledger",
        ):
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="append-only"):
                conn.execute(statement)
    assert len(ledger(database_url)) == 2


def _id(raw: bytes) -> str:
    import orjson

    return orjson.loads(raw)["id"]
