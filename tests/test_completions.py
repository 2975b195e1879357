"""The completion signal: NOTIFY refresh_done from the settling transaction, split under the
payload limit, and the waiter a site uses."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coclib.completions import (
    CHANNEL,
    MAX_PAYLOAD_BYTES,
    SETTLED_OUTCOMES,
    RefreshWaiter,
    Settled,
    parse_payload,
    payloads,
)
from coclib.db import Database
from coclib.queue import MAX_ID_CHARS, RefreshRequest
from coclib.reasons import Reason
from coclib.snapshots import JsonText, Snapshot
from ledger.outcomes import SETTLING, LedgerRow, Outcome
from ledger.writer import Entry, LedgerWriter
from tests.helpers import drain, ledger, push

SENTINEL = "sentinel"


def heard_until_sentinel(conn: psycopg.Connection, database_url: str) -> list[Settled]:
    """Everything `conn` (listening) hears on the channel up to a sentinel sent now.

    Postgres delivers notifications in commit order, so whatever committed before the sentinel
    has been heard when the sentinel is: no waiting for time to pass.
    """
    with psycopg.connect(database_url, autocommit=True) as other:
        other.execute("SELECT pg_notify(%s, %s)", (CHANNEL, SENTINEL))
    heard: list[Settled] = []
    while True:
        for note in conn.notifies(stop_after=1):
            if note.payload == SENTINEL:
                return heard
            heard += parse_payload(note.payload)


def listener(database_url: str) -> psycopg.Connection:
    conn = psycopg.connect(database_url, autocommit=True)
    conn.execute(f"LISTEN {CHANNEL}")
    return conn


def test_the_contracts_settling_outcomes_are_the_ledgers():
    assert set(SETTLED_OUTCOMES) == {str(o) for o in SETTLING}
    assert {o for o in Outcome if o.settles} == SETTLING


# -- splitting -----------------------------------------------------------------------------

ids = st.text(
    st.characters(exclude_categories=("Cs", "Cc")) | st.sampled_from('"\\'), min_size=1, max_size=MAX_ID_CHARS
)
settled_requests = st.builds(
    Settled,
    id=ids,
    kind=st.sampled_from(["player", "clan", "war", None]),
    tag=st.none() | st.from_regex(r"#[0289PYLQGRJCUV]{3,14}", fullmatch=True),
    outcome=st.sampled_from(SETTLED_OUTCOMES),
)


@given(st.lists(settled_requests, max_size=300), st.integers(min_value=700, max_value=MAX_PAYLOAD_BYTES))
def test_payloads_keep_every_request_in_order_each_within_the_limit(batch, limit):
    out = payloads(batch, limit)
    assert [one for payload in out for one in parse_payload(payload)] == batch
    for i, payload in enumerate(out):
        assert len(payload.encode()) <= limit
        # Greedy: a payload is closed only when the next request would not fit in it.
        if i + 1 < len(out):
            first_of_next = orjson.dumps(orjson.loads(out[i + 1])[0])
            assert len(payload.encode()) + 1 + len(first_of_next) > limit
    assert (out == []) == (batch == [])


def test_the_limit_is_postgres_own(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "x" * MAX_PAYLOAD_BYTES))
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="payload string too long"):
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "x" * (MAX_PAYLOAD_BYTES + 1)))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(settled_requests, min_size=1, max_size=12),
    st.integers(min_value=1, max_value=400),
)
def test_payloads_at_the_limit_are_sent_and_heard_whole(database_url, head, repeat):
    # Batches of up to a few thousand requests, many of them filling payloads to the byte.
    batch = [Settled(f"{one.id}-{n}", one.kind, one.tag, one.outcome) for n in range(repeat) for one in head]
    sent = payloads(batch)
    assert max(len(p.encode()) for p in sent) <= MAX_PAYLOAD_BYTES
    with listener(database_url) as conn:
        with psycopg.connect(database_url) as writer, writer.transaction():
            writer.execute("SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (CHANNEL, sent))
        assert heard_until_sentinel(conn, database_url) == batch


# -- the writer ----------------------------------------------------------------------------


def _entry(outcome: Outcome, *, refused: bool = False) -> Entry:
    request_id = uuid.uuid4().hex
    tag = "#2PP"
    snapshot = None
    if outcome == Outcome.FETCHED:
        body = b'{"name": "nul \\u0000"}' if refused else b'{"name": "ok"}'  # jsonb cannot hold \u0000
        snapshot = Snapshot("player", tag, JsonText(body), time.time())
    reason = Reason.NOT_FOUND if outcome == Outcome.FAILED else None
    if outcome == Outcome.DEFERRED:
        reason = Reason.MAINTENANCE
    return Entry((LedgerRow(request_id, outcome, "player", tag, reason),), snapshot)


def _write(database_url: str, entries: list[Entry]):
    async def go():
        db = await Database.open(database_url)
        try:
            return await LedgerWriter(db, uuid.uuid4()).write(entries)
        finally:
            await db.close()

    return asyncio.run(go())


def _told(entry: Entry) -> Settled:
    row = entry.rows[-1]
    return Settled(row.request_id, row.kind, row.tag, str(row.outcome))


def test_a_batch_tells_what_it_settled_and_a_refused_part_tells_nothing(database_url):
    good = [_entry(Outcome.FETCHED), _entry(Outcome.FAILED), _entry(Outcome.FETCHED)]
    refused = _entry(Outcome.FETCHED, refused=True)
    unsettled = _entry(Outcome.DEFERRED)
    batch = [good[0], refused, good[1], unsettled, good[2]]
    with listener(database_url) as conn:
        written = _write(database_url, batch)
        heard = heard_until_sentinel(conn, database_url)
    assert [e for e, _ in written.refused] == [refused]
    # The whole batch was rolled back once, then its halves: only what committed is heard,
    # each once, and never the refused request nor the deferred one.
    assert sorted(heard, key=lambda s: s.id) == sorted(map(_told, good), key=lambda s: s.id)
    stored = {r["request_id"] for r in ledger(database_url) if r["outcome"] in SETTLED_OUTCOMES}
    assert {s.id for s in heard} == stored


def test_a_rolled_back_batch_notifies_nothing(database_url):
    with listener(database_url) as conn:
        written = _write(database_url, [_entry(Outcome.FETCHED, refused=True)])
        assert written.refused and not written.committed
        assert heard_until_sentinel(conn, database_url) == []


# -- a real drain --------------------------------------------------------------------------


def test_every_request_a_drain_settles_is_heard_once(settings, redis_client, simulator):
    simulator.not_found.add("#YYYY")
    requests = [RefreshRequest(f"ok-{n}", "player", tag) for n, tag in enumerate(["#2PP", "#8QU"] * 40)] + [
        RefreshRequest("gone", "player", "#YYYY")
    ]  # unknown: failed not_found
    push(redis_client, settings, *requests, b"not json", b'{"id": "bad-kind", "kind": "x", "tag": "#2PP"}')
    with listener(settings.database.database_url) as conn:
        summary = drain(settings)
        heard = heard_until_sentinel(conn, settings.database.database_url)
    # Two tags, forty requests each: one call per tag, the rest settled skipped-fresh (and heard).
    assert summary.counts.get(Outcome.FETCHED) == 2 and summary.counts.get(Outcome.SKIPPED_FRESH) == 78
    rows = [r for r in ledger(settings.database.database_url) if r["outcome"] in SETTLED_OUTCOMES]
    assert len(rows) == 83
    assert sorted(heard, key=lambda s: s.id) == sorted(
        (Settled(r["request_id"], r["kind"], r["tag"], r["outcome"]) for r in rows), key=lambda s: s.id
    )


# -- the waiter ----------------------------------------------------------------------------


def test_the_waiter_hears_ids_and_tags_and_finds_ids_settled_before_it_waited(
    settings, redis_client, simulator
):
    simulator.not_found.add("#YYYY")
    push(redis_client, settings, RefreshRequest("early", "player", "#2PP"))
    drain(settings)  # settled before anyone listened: the ledger says so
    with RefreshWaiter.connect(settings.database.database_url) as waiter:
        push(
            redis_client,
            settings,
            RefreshRequest("p", "player", "#2PP"),
            RefreshRequest("c", "clan", "#8QU"),
            RefreshRequest("g", "player", "#YYYY"),
        )
        drain(settings)
        waited = waiter.wait(ids=["early", "g"], tags=[("clan", "#8QU")], timeout=30)
        assert waited.complete
        assert {(s.id, s.outcome) for s in waited.settled} == {
            ("early", "fetched"),
            ("g", "failed"),
            ("c", "fetched"),
        }
        # Heard during the first wait and not wanted then: kept for the next.
        again = waiter.wait(tags=[(None, "#2PP")], timeout=30)
        assert [(s.id, s.kind) for s in again.settled] == [("p", "player")]
        missed = waiter.wait(ids=["never"], tags=[("war", "#8QU")], timeout=0)
        assert not missed.complete
        assert missed.missing_ids == ["never"] and missed.missing_tags == [("war", "#8QU")]
