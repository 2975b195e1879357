"""No input can stop the worker: poison items, data Postgres refuses, unexpected errors.

Real Postgres and Redis, the simulator for the API. Each test makes a run meet one kind of
bad input among good requests and checks that the run settles every good request, records
the bad one once (or moves it aside), and that the next run drains on.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import orjson
import psycopg
import pytest

from coclib.coc_api import CocApi
from coclib.keys import QueueKeys
from coclib.migrations import MIGRATIONS_DIR, discover, migrate
from coclib.queue import RefreshRequest, request_id_for
from coclib.testing.lambda_context import LambdaContext, scheduled_event
from tests.helpers import drain, inflight_items, ledger, migrate_before, outcomes, push, query, queue_items
from tests.invariants import fresh_tag
from worker.drain import DrainPolicy

CHECKED = DrainPolicy(checks=True)  # the tracker's books are checked after every step


def req(request_id: str, tag: str, kind: str = "player") -> RefreshRequest:
    return RefreshRequest(request_id, kind, tag, 1_700_000_000.0)


def keys_of(settings) -> QueueKeys:
    return QueueKeys(settings.queue.refresh_queue_key)


def fetched_ids(database_url: str) -> set[str]:
    return {r["request_id"] for r in ledger(database_url) if r["outcome"] == "fetched"}


# -- poison items ---------------------------------------------------------------------------


def test_a_nul_byte_item_among_valid_ones_fails_alone_and_the_next_run_drains_on(
    settings, redis_client, database_url, simulator
):
    poison = b"\xff\xfe\x00garbage"
    push(redis_client, settings, req("a", "#2PP"), poison, req("b", "#2PQ"), req("c", "#2PR"))

    first = drain(settings, policy=CHECKED)

    assert first.stopped == "queue_empty"
    assert fetched_ids(database_url) == {"a", "b", "c"}
    rows = ledger(database_url, request_id_for(poison))
    assert [(r["outcome"], r["reason"]) for r in rows] == [("failed", "invalid_request")]
    assert "\\xff\\xfe\\x00garbage" in rows[0]["detail"]  # what came in, written out visibly
    assert queue_items(redis_client, settings) == [] and inflight_items(redis_client, settings) == []

    push(redis_client, settings, req("d", "#2PU"))
    second = drain(settings, policy=CHECKED)

    assert second.stopped == "queue_empty" and outcomes(database_url, "d")[-1] == ("fetched", None)


@pytest.mark.parametrize(
    ("payload", "reason", "shown"),
    [
        (b'{"id": "x\\u0000y", "kind": "player", "tag": "#2PP"}', "invalid_request", "'id' must be"),
        (b'{"id": "t1", "kind": "player", "tag": "#2P\\u0000P"}', "invalid_tag", "\\x00"),
        (b'{"id": "t2", "kind": "pl\\u0000ayer", "tag": "#2PP"}', "invalid_request", "\\x00"),
        (b'{"id": "t3", "kind": "player", "tag": "#2PP\\ud800"}', "invalid_request", "not JSON"),
        (b'{"id": "t4", "kind": "player", "tag": "#2PP", "x": "\\u0000"}', None, None),
    ],
)
def test_nul_and_lone_surrogates_inside_json_are_recorded_visibly(
    payload, reason, shown, settings, redis_client, database_url, simulator
):
    push(redis_client, settings, payload, req("ok", "#2PQ"))

    summary = drain(settings, policy=CHECKED)

    assert summary.stopped == "queue_empty" and "ok" in fetched_ids(database_url)
    rows = [r for r in ledger(database_url) if r["request_id"] != "ok"]
    if reason is None:  # an unknown field holding NUL is ignored: the request itself is fine
        assert rows[-1]["outcome"] == "fetched"
        return
    assert [(r["outcome"], r["reason"]) for r in rows] == [("failed", reason)]
    assert shown in rows[0]["detail"] and "\x00" not in rows[0]["detail"]


def test_a_poisoned_in_flight_list_never_stops_a_run(settings, redis_client, database_url, simulator):
    # What a run that died leaves behind, with one item no run could ever record as it is.
    keys = keys_of(settings)
    redis_client.rpush(
        keys.inflight, b"\x00\xff", orjson.dumps({"id": "left", "kind": "clan", "tag": "#2PP"})
    )
    push(redis_client, settings, req("queued", "#2PQ"))

    first = drain(settings, policy=CHECKED)

    assert first.stopped == "queue_empty" and first.recovered == {"failed": 1, "requeued": 1}
    assert fetched_ids(database_url) == {"left", "queued"}
    assert outcomes(database_url, request_id_for(b"\x00\xff")) == [("failed", "invalid_request")]
    assert inflight_items(redis_client, settings) == [] and queue_items(redis_client, settings) == []
    assert drain(settings, policy=CHECKED).stopped == "queue_empty"


# -- what Postgres refuses ----------------------------------------------------------------------


def test_a_snapshot_postgres_refuses_fails_that_request_alone_as_unstorable(
    settings, redis_client, database_url, simulator
):
    # Any value Postgres will not store (too large for an index, against a CHECK, …) stands in
    # for this one: a constraint that refuses one tag's snapshot.
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE players ADD CONSTRAINT refuses_one_tag CHECK (tag <> '#2PQ')")
    tags = ["#2PP", "#2PQ", "#2PR", "#2PU", "#2PV"]
    push(redis_client, settings, *[req(f"p{i}", tag) for i, tag in enumerate(tags)])

    summary = drain(settings, policy=DrainPolicy(checks=True, flush_rows=64, flush_interval=5.0))

    assert summary.stopped == "queue_empty"
    assert outcomes(database_url, "p1") == [("attempted", None), ("failed", "unstorable")]
    detail = ledger(database_url, "p1")[-1]["detail"]
    assert "refuses_one_tag" in detail
    assert fetched_ids(database_url) == {"p0", "p2", "p3", "p4"}
    stored = {r["tag"] for r in query(database_url, "SELECT tag FROM players")}
    assert stored == {"#2PP", "#2PR", "#2PU", "#2PV"}
    assert summary.counts == {"attempted": 5, "fetched": 4, "failed": 1}
    stored_summary = query(database_url, "SELECT summary FROM refresh_run_summaries")[0]["summary"]
    assert stored_summary["counts"] == {"attempted": 5, "fetched": 4, "failed": 1}
    assert queue_items(redis_client, settings) == [] and inflight_items(redis_client, settings) == []


_REFUSE_DOOMED = """
CREATE FUNCTION refuse_doomed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.request_id LIKE 'doomed%' AND NEW.outcome <> 'attempted' THEN
        RAISE EXCEPTION 'no terminal row for %', NEW.request_id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_doomed BEFORE INSERT ON refresh_ledger FOR EACH ROW EXECUTE FUNCTION refuse_doomed();
"""


def test_a_request_not_even_a_failed_row_can_be_stored_for_goes_to_the_dead_letter_list(
    settings, redis_client, database_url, simulator, caplog
):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(_REFUSE_DOOMED)
    doomed = req("doomed-1", "#2PQ")
    push(redis_client, settings, req("a", "#2PP"), doomed, req("b", "#2PR"))

    with caplog.at_level(logging.ERROR):
        summary = drain(settings, policy=CHECKED)

    keys = keys_of(settings)
    assert summary.stopped == "queue_empty" and summary.items["dead_lettered"] == 1
    assert fetched_ids(database_url) == {"a", "b"}
    assert outcomes(database_url, "doomed-1") == [("attempted", None)]
    [dead] = redis_client.lrange(keys.dead_letter, 0, -1)
    assert orjson.loads(dead)["id"] == "doomed-1"
    assert queue_items(redis_client, settings) == [] and inflight_items(redis_client, settings) == []
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("doomed-1" in m and keys.dead_letter in m for m in errors), errors

    # Recovery follows the same rule: a malformed doomed item left in flight is moved aside too.
    redis_client.rpush(keys.inflight, b'{"id": "doomed-2", "kind": "nothing"}')
    push(redis_client, settings, req("c", "#2PU"))
    again = drain(settings, policy=CHECKED)
    assert again.stopped == "queue_empty" and "c" in fetched_ids(database_url)
    assert len(redis_client.lrange(keys.dead_letter, 0, -1)) == 2
    assert inflight_items(redis_client, settings) == []


# -- unexpected errors ----------------------------------------------------------------------------


@pytest.fixture
def broken_for(monkeypatch):
    """Make processing a chosen tag's answer raise, as a bug in the worker would."""
    broken: set[str] = set()
    real_fetch = CocApi.fetch

    async def fetch(self, kind, tag, **kwargs):
        fetched = await real_fetch(self, kind, tag, **kwargs)
        if tag in broken:
            raise RuntimeError(f"injected fault processing {tag}")
        return fetched

    monkeypatch.setattr(CocApi, "fetch", fetch)
    return broken


def test_an_unexpected_error_stops_the_run_puts_the_rest_back_and_the_next_run_goes_on(
    settings, redis_client, database_url, simulator, broken_for
):
    broken_for.add("#2PQ")
    simulator.latency = (0.05, 0.05)
    tags = ["#2PP", "#2PQ", "#2PR", "#2PU", "#2PV", "#2PY"]
    push(redis_client, settings, *[req(f"r{i}", tag) for i, tag in enumerate(tags)])
    before = queue_items(redis_client, settings)

    summary = drain(settings, policy=DrainPolicy(checks=True, max_in_flight=2, dispatch_batch=1))

    assert summary.stopped == "internal_error" and summary.cause == "internal_error"
    assert summary.detail.startswith("RuntimeError: injected fault")
    assert isinstance(summary.error, RuntimeError)
    assert outcomes(database_url, "r1")[-1] == ("deferred", "unexpected_error")
    fetched = fetched_ids(database_url)
    for i in range(2, 6):
        rows = outcomes(database_url, f"r{i}")
        assert not rows or rows[-1] in (("deferred", "internal_error"), ("fetched", None)), rows
    # The rest are back at the head, in their order; nothing stays in flight.
    assert queue_items(redis_client, settings) == [b for b in before if orjson.loads(b)["id"] not in fetched]
    assert inflight_items(redis_client, settings) == []
    stored = query(database_url, "SELECT stopped, cause FROM refresh_run_summaries")
    assert stored == [{"stopped": "internal_error", "cause": "internal_error"}]

    broken_for.clear()  # the bug is fixed
    after = drain(settings, policy=CHECKED)
    assert after.stopped == "queue_empty" and fetched_ids(database_url) == {f"r{i}" for i in range(6)}


def test_a_request_that_keeps_stopping_runs_is_failed_after_the_limit(
    settings, redis_client, database_url, simulator, broken_for
):
    broken_for.add("#2PQ")
    push(redis_client, settings, req("culprit", "#2PQ"), req("fine", "#2PP"))
    policy = DrainPolicy(checks=True, unexpected_limit=2, max_in_flight=1, dispatch_batch=1)

    runs = [drain(settings, policy=policy) for _ in range(3)]

    assert [r.stopped for r in runs] == ["internal_error", "internal_error", "queue_empty"]
    assert outcomes(database_url, "culprit") == [
        ("attempted", None),
        ("deferred", "unexpected_error"),
        ("attempted", None),
        ("deferred", "unexpected_error"),
        ("failed", "unexpected_error"),
    ]
    assert [c.tag for c in simulator.calls].count("#2PQ") == 2  # not called a third time
    assert outcomes(database_url, "fine")[-1] == ("fetched", None)
    assert queue_items(redis_client, settings) == []


def test_the_invocation_fails_on_an_internal_error_and_the_next_one_drains(
    worker_env, redis_client, database_url, simulator, broken_for, monkeypatch
):
    import lambda_function
    from worker.actions import RunFailed
    from worker.lambda_function import shutdown

    for name, value in worker_env.items():
        monkeypatch.setenv(name, value)
    settings_keys = QueueKeys("{coc:refresh}:queue")
    redis_client.rpush(
        settings_keys.queue,
        *[orjson.dumps({"id": i, "kind": "player", "tag": t}) for i, t in [("h1", "#2PQ"), ("h2", "#2PP")]],
    )
    broken_for.add("#2PQ")
    try:
        with pytest.raises(RunFailed, match="internal error"):
            lambda_function.lambda_handler(scheduled_event(), LambdaContext(timeout_seconds=60))
        broken_for.clear()
        summary = lambda_function.lambda_handler(scheduled_event(), LambdaContext(timeout_seconds=60))
    finally:
        shutdown()
    assert summary["stopped"] == "queue_empty"
    assert {"h1", "h2"} <= fetched_ids(database_url)


# -- reasons are codes ----------------------------------------------------------------------------


def test_postgres_refuses_free_text_reasons_but_keeps_older_rows(empty_database_url, tmp_path: Path):
    migrate_before(empty_database_url, 4, tmp_path / "migrations")
    insert = (
        "INSERT INTO refresh_ledger (request_id, run_id, outcome, reason) "
        "VALUES (%s, gen_random_uuid(), 'deferred', %s)"
    )
    sentence = "the drain lease expired or was taken over"
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(insert, ("old", sentence))
        conn.execute(
            "INSERT INTO refresh_run_summaries VALUES (gen_random_uuid(), now(), now(), 'circuit_open', "
            "'maintenance: the API is in maintenance (503)', '{}')"
        )

    assert migrate(empty_database_url, MIGRATIONS_DIR) == [m.path.name for m in discover() if m.version >= 4]

    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        assert conn.execute("SELECT reason FROM refresh_ledger").fetchall() == [(sentence,)]
        with pytest.raises(psycopg.errors.CheckViolation, match="reason_is_a_code"):
            conn.execute(insert, ("new", sentence))
        conn.execute(insert, ("new", "lease_lost"))
        with pytest.raises(psycopg.errors.CheckViolation, match="cause_is_a_code"):
            conn.execute(
                "INSERT INTO refresh_run_summaries VALUES (gen_random_uuid(), now(), now(), "
                "'circuit_open', 'Maintenance!', '{}')"
            )


def test_a_lost_lease_writes_its_code(settings, redis_client, database_url, simulator):
    simulator.latency = (0.2, 0.2)
    push(redis_client, settings, *[req(f"l{i}", fresh_tag()) for i in range(14)])
    keys = keys_of(settings)

    async def steal_after_first_attempt(run):
        # The query runs in a thread: it must not block the loop the drain runs on.
        while not await asyncio.to_thread(query, database_url, "SELECT 1 FROM refresh_ledger LIMIT 1"):
            await asyncio.sleep(0.02)
        redis_client.set(keys.lease, "another-drain yields", px=10_000)
        return await run

    from worker.runtime import Worker

    async def go():
        worker = Worker(settings, policy=DrainPolicy(checks=True, max_in_flight=2, dispatch_batch=1))
        try:
            run = asyncio.ensure_future(worker.drain(30))
            return await steal_after_first_attempt(run)
        finally:
            await worker.close()

    summary = asyncio.run(go())

    assert summary.stopped == "lease_lost" and summary.cause == "lease_lost"
    closing = {r["reason"] for r in ledger(database_url) if r["outcome"] == "deferred"}
    assert closing == {"lease_lost"}
    redis_client.delete(keys.lease)


# -- answers the API should not send ------------------------------------------------------------


def test_a_tag_answered_with_an_html_page_at_the_head_of_the_queue_fails_and_the_rest_drains(
    settings, redis_client, database_url, simulator
):
    simulator.bad_body["#2PQ"] = "html"
    tags = ["#2PQ", "#2PP", "#2PR", "#2PU", "#2PV", "#2PY"]
    push(redis_client, settings, *[req(f"h{i}", tag) for i, tag in enumerate(tags)])

    summary = drain(settings, policy=DrainPolicy(checks=True, max_tries=3, retry_backoff=0.01))

    assert summary.stopped == "queue_empty"
    assert outcomes(database_url, "h0") == [("attempted", None)] * 3 + [("failed", "bad_response")]
    assert "Service temporarily unavailable" in ledger(database_url, "h0")[-1]["detail"]
    assert [c.tag for c in simulator.calls].count("#2PQ") == 3  # the normal retries, no more
    assert fetched_ids(database_url) == {f"h{i}" for i in range(1, 6)}
    assert queue_items(redis_client, settings) == [] and inflight_items(redis_client, settings) == []


@pytest.mark.parametrize(
    ("variant", "ending"),
    [
        ("html", ("failed", "bad_response")),
        ("truncated_json", ("failed", "bad_response")),
        ("json_array", ("failed", "bad_response")),
        ("json_string", ("failed", "bad_response")),
        ("empty", ("failed", "bad_response")),
        ("wrong_content_type", ("failed", "bad_response")),
        ("nul_in_string", ("failed", "unstorable")),
        ("huge", ("failed", "unstorable")),
    ],
)
@pytest.mark.parametrize("kind", ["player", "war"])
def test_each_kind_of_bad_body_is_classified_and_costs_at_most_the_normal_retries(
    variant, ending, kind, settings, redis_client, database_url, simulator
):
    simulator.bad_body["#2PQ"] = variant
    push(redis_client, settings, req("bad", "#2PQ", kind), req("good", "#2PP", kind))

    summary = drain(settings, policy=DrainPolicy(checks=True, max_tries=2, retry_backoff=0.01))

    assert summary.stopped == "queue_empty"
    assert outcomes(database_url, "bad")[-1] == ending
    assert [c.tag for c in simulator.calls].count("#2PQ") == (2 if ending[1] == "bad_response" else 1)
    assert outcomes(database_url, "good")[-1] == ("fetched", None)
    table, key = {"player": ("players", "tag"), "war": ("wars", "clan_tag")}[kind]
    stored = {r["tag"] for r in query(database_url, f"SELECT {key} AS tag FROM {table}")}
    assert stored == ({"#2PP", "#2PQ"} if ending[0] == "fetched" else {"#2PP"})
    detail = ledger(database_url, "bad")[-1]["detail"]
    assert detail is None or "\x00" not in detail


def test_html_pages_for_many_requests_in_a_row_open_the_circuit_and_fail_nothing(
    settings, redis_client, database_url, simulator
):
    # A proxy in front of the API answers every call with its error page: the API is down for
    # us, and none of the requests is to blame.
    tags = ["#2PP", "#2PQ", "#2PR", "#2PU", "#2PV", "#2PY"]
    simulator.bad_body.update({tag: "html" for tag in tags})
    push(redis_client, settings, *[req(f"c{i}", tag) for i, tag in enumerate(tags)])
    before = queue_items(redis_client, settings)

    summary = drain(settings, policy=DrainPolicy(checks=True, transient_streak=3, retry_backoff=0.01))

    assert summary.stopped == "circuit_open" and summary.cause == "api_down"
    assert "failed" not in {r["outcome"] for r in ledger(database_url)}
    assert queue_items(redis_client, settings) == before


_BROKEN_CLI = """
import sys
from coclib.coc_api import CocApi
real = CocApi.fetch

async def fetch(self, kind, tag, **kwargs):
    await real(self, kind, tag, **kwargs)
    raise RuntimeError("injected fault")

CocApi.fetch = fetch
from worker.cli import main
sys.exit(main(["drain", "--seconds", "20"]))
"""


def test_the_cli_drain_exits_1_on_an_internal_error_and_prints_the_summary(
    worker_env, settings, redis_client, database_url, simulator
):
    import os
    import subprocess
    import sys

    push(redis_client, settings, req("cli", "#2PP"))
    env = {**os.environ, **worker_env}
    done = subprocess.run(
        [sys.executable, "-c", _BROKEN_CLI], env=env, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 1, done.stderr
    summary = orjson.loads(done.stdout[done.stdout.index("{\n") :])
    assert summary["stopped"] == "internal_error" and summary["detail"] == "RuntimeError: injected fault"
    assert outcomes(database_url, "cli")[-1] == ("deferred", "unexpected_error")
