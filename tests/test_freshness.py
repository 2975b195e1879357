"""The freshness gate and change detection: headers, snapshots, the drain, recovery, the migration.

A request whose stored snapshot is still inside the API's own cache lifetime (`Cache-Control:
max-age` minus `Age`) is settled `skipped-fresh` without a call; a fetch that brings back the
stored body is `fetched` with `changed` false and does not rewrite the body.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from coclib.coc_api import CocApi
from coclib.db import Database
from coclib.freshness import MAX_AGE_CAP_SECONDS, age, fresh_for, max_age
from coclib.keys import QueueKeys
from coclib.migrations import MIGRATIONS_DIR, migrate
from coclib.queue import RefreshRequest, encode
from coclib.ratelimit import RateLimiter
from coclib.settings import Settings
from coclib.snapshots import snapshot_of, upsert_snapshots
from coclib.sqlfiles import load_queries
from coclib.testing.tags import numbered_tag
from tests.helpers import drain, inflight_items, ledger, push, query, queue_items
from worker.drain import DrainPolicy
from worker.runtime import Worker

# --- the headers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("max-age=60", 60),
        ("max-age=120", 120),
        ("public max-age=600", 600),  # the API's other form
        ("public, max-age=60", 60),
        ("max-age=60, public", 60),
        ("  Max-Age=60 ", 60),
        ('max-age="60"', 60),
        ("max-age=60, max-age=60", 60),
        ("max-age=0", 0),
        ("max-age=3600", MAX_AGE_CAP_SECONDS),  # absurd: capped at the largest the API sends
        ("max-age=99999999999999999999", None),  # not a number of seconds anyone means
        (None, None),
        ("", None),
        ("garbage", None),
        ("max-age", None),
        ("max-age=", None),
        ("max-age=abc", None),
        ("max-age=-5", None),
        ("max-age=6O", None),
        ("max-age=60, max-age=120", None),  # two that disagree: stale (RFC 9111 4.2.1)
        ("no-store", None),
        ("max-age=60, no-cache", None),
        ("s-maxage=60", None),
        ('max-age="60', None),
    ],
)
def test_max_age_reads_both_forms_and_refuses_the_rest(header, expected):
    assert max_age(header) == expected


@pytest.mark.parametrize(
    ("header", "ages", "expected"),
    [
        ("max-age=60", [], 60),
        ("max-age=60", ["0"], 60),
        ("max-age=60", ["10"], 50),
        ("max-age=60", ["59"], 1),
        ("max-age=60", ["60"], None),  # a shared cache held it its whole life: stale now
        ("max-age=60", ["61"], None),
        ("public max-age=600", ["100"], 500),
        ("max-age=60", ["abc"], None),  # how old it is cannot be told: not fresh
        ("max-age=60", ["-1"], None),
        ("max-age=60", ["5", "7"], None),
        ("max-age=60", ["5", "5"], 55),
        ("max-age=0", [], None),
        (None, ["0"], None),
        ("garbage", [], None),
    ],
)
def test_fresh_for_is_max_age_minus_age(header, ages, expected):
    assert fresh_for(header, ages) == expected


@given(header=st.one_of(st.none(), st.text()), ages=st.lists(st.text(), max_size=3))
def test_any_header_is_not_fresh_or_fresh_within_the_cap(header, ages):
    found = fresh_for(header, ages)
    assert found is None or 1 <= found <= MAX_AGE_CAP_SECONDS


@given(
    seconds=st.integers(0, 10**6),
    held=st.integers(0, 10**6),
    before=st.sampled_from(["", "public ", "public, ", "private,", " "]),
    after=st.sampled_from(["", ", public", " public", ",must-revalidate"]),
)
def test_max_age_minus_age_whatever_the_separators(seconds, held, before, after):
    lifetime = min(seconds, MAX_AGE_CAP_SECONDS) - held
    assert fresh_for(f"{before}max-age={seconds}{after}", [str(held)]) == (lifetime if lifetime > 0 else None)
    assert age([]) == 0 and age([str(held)]) == held


# --- the API client: headers reach the fetch ---------------------------------------------------


def fetch(simulator, kind, tag="#2PP"):
    async def go():
        api = await CocApi.connect(
            base_url=simulator.base_url, limiter=RateLimiter(30), tokens=("test-token",)
        )
        try:
            before = time.monotonic()
            fetched = await api.fetch(kind, tag, timeout=5.0)
            return before, fetched, time.monotonic()
        finally:
            await api.close()

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("kind", "cache_control", "sim_age", "lifetime"),
    [
        ("player", "max-age=60", None, 60),
        ("clan", "max-age=60", None, 60),
        ("war", "max-age=120", None, 120),
        ("player", "public max-age=600", None, 600),
        ("player", "max-age=60", 45, 15),
        ("player", "max-age=60", 60, None),
        ("player", None, None, None),
        ("player", "max-age=sixty", None, None),
    ],
)
def test_a_fetch_is_fresh_until_the_call_plus_max_age_minus_age(
    simulator, kind, cache_control, sim_age, lifetime
):
    simulator.cache_control[kind] = cache_control
    simulator.age = sim_age
    before, fetched, after = fetch(simulator, kind)
    if lifetime is None:
        assert fetched.fresh_until is None
    else:
        # From when the call was let go: never later than the API's own expiry.
        assert before + lifetime <= fetched.fresh_until <= after + lifetime


def test_coc_pys_injected_keys_never_reach_the_body(simulator):
    _, fetched, _ = fetch(simulator, "player")
    assert not {"status_code", "timestamp", "_response_retry"} & set(fetched.data)


# --- snapshots: change detection and fresh_until on Postgres's clock -------------------------------


def upsert(database_url, *snapshots):
    async def go():
        db = await Database.open(database_url)
        try:
            async with db.transaction() as conn:
                return await upsert_snapshots(db, conn, snapshots)
        finally:
            await db.close()

    return asyncio.run(go())


def test_an_unchanged_body_is_reported_and_not_rewritten(database_url):
    body = {"tag": "#2PP", "name": "Ka", "trophies": 1}
    now = time.time()
    assert upsert(database_url, snapshot_of("player", "#2PP", body, now - 30)) == {("player", "#2PP"): True}
    # Mark the stored body: if an unchanged refresh rewrote `data`, the mark would be gone.
    query(database_url, "UPDATE players SET data = data || '{\"mark\": 1}' RETURNING tag")
    (first,) = query(database_url, "SELECT fetched_at FROM players")
    assert upsert(database_url, snapshot_of("player", "#2PP", body, now - 20)) == {("player", "#2PP"): False}
    (row,) = query(database_url, "SELECT data, fetched_at FROM players")
    assert row["data"]["mark"] == 1 and row["fetched_at"] > first["fetched_at"]  # the fetch time advances
    changed = {**body, "trophies": 2}
    assert upsert(database_url, snapshot_of("player", "#2PP", changed, now - 10)) == {
        ("player", "#2PP"): True
    }
    assert query(database_url, "SELECT data FROM players")[0]["data"] == changed
    # An older fetch than the stored one writes nothing, and changes nothing.
    assert upsert(database_url, snapshot_of("player", "#2PP", body, now - 40)) == {}


@pytest.mark.parametrize("step", [0.0, 86_400.0, -86_400.0, 10 * 365 * 86_400.0])
def test_fresh_until_is_on_postgres_clock_whatever_the_workers_clock_says(database_url, step):
    # The worker's wall clock stepped by `step`: fetched_at is off by that much, freshness is not.
    snap = snapshot_of(
        "clan", "#2PP", {"tag": "#2PP"}, time.time() + step, fresh_until=time.monotonic() + 120
    )
    upsert(database_url, snap)
    (row,) = query(database_url, "SELECT fresh_until - now() AS left FROM clans")
    assert timedelta(0) < row["left"] <= timedelta(seconds=120)


def test_a_snapshot_without_freshness_is_never_fresh(database_url):
    upsert(database_url, snapshot_of("war", "#2PP", {"state": "notInWar"}, time.time(), fresh_until=None))
    upsert(
        database_url,
        snapshot_of("player", "#2PQ", {"tag": "#2PQ"}, time.time(), fresh_until=time.monotonic() - 1),
    )
    assert query(database_url, "SELECT fresh_until FROM wars UNION ALL SELECT fresh_until FROM players") == [
        {"fresh_until": None},
        {"fresh_until": None},
    ]


def test_the_gate_query_at_the_boundary(database_url):
    """Fresh strictly before fresh_until, on Postgres's clock; NULL is never fresh."""
    fresh = load_queries()["fresh_snapshots"]
    with psycopg.connect(database_url) as conn, conn.transaction():  # one now() for all
        insert = "INSERT INTO {} VALUES (%s, '{{}}', now(), {})"
        for tag, until in (("#2PP", "now() + interval '1 ms'"), ("#2PQ", "now()"), ("#2PR", "NULL")):
            conn.execute(insert.format("players (tag, data, fetched_at, fresh_until)", until), (tag,))
        conn.execute(
            insert.format("wars (clan_tag, data, fetched_at, fresh_until)", "now() + interval '1 h'"),
            ("#2PP",),
        )
        found = conn.execute(
            fresh, {"players": ["#2PP", "#2PQ", "#2PR", "#2PU"], "clans": ["#2PP"], "wars": ["#2PP"]}
        )
        assert sorted((kind, tag) for kind, tag, _ in found) == [("player", "#2PP"), ("war", "#2PP")]


# --- the drain --------------------------------------------------------------------------------


def req(i, kind="player", tag="#2PP"):
    return RefreshRequest(str(i), kind, tag, 1_700_000_000.0)


def test_a_request_for_a_fresh_snapshot_is_settled_once_without_a_call(
    settings, redis_client, database_url, simulator
):
    push(redis_client, settings, req(1))
    first = drain(settings)
    assert first.counts == {"attempted": 1, "fetched": 1}
    push(redis_client, settings, req(2))
    second = drain(settings)

    assert second.counts == {"skipped-fresh": 1} and second.processed_requests == 1
    assert second.api_requests == 0 and simulator.calls_per_tag() == {"#2PP": 1}
    rows = ledger(database_url, "2")
    assert [(r["outcome"], r["reason"], r["changed"]) for r in rows] == [("skipped-fresh", "fresh", None)]
    assert rows[0]["detail"].startswith("the stored snapshot is fresh until 20")
    # Settled: acknowledged, never back in the queue, and a later run has nothing to do.
    assert queue_items(redis_client, settings) == [] and inflight_items(redis_client, settings) == []
    assert drain(settings).counts == {}
    assert len(ledger(database_url, "2")) == 1


def test_health_counts_requests_skipped_as_fresh_and_the_share_of_fetches_that_changed(
    settings, redis_client, simulator
):
    push(redis_client, settings, req(1), req(2, tag="#2PQ"))
    drain(settings)
    push(redis_client, settings, req(3), req(4, "clan"))
    drain(settings)

    async def health():
        worker = Worker(settings)
        try:
            return await worker.health()
        finally:
            await worker.close()

    report = asyncio.run(health())
    ledger_stats = report.body["ledger"]
    assert report.status == "healthy" and ledger_stats["skipped_fresh"] == 1
    assert ledger_stats["fetch_changes"] == {
        "player": {"fetched": 2, "changed": 2, "share": 1.0},
        "clan": {"fetched": 1, "changed": 1, "share": 1.0},
    }


def test_zero_calls_inside_max_age_minus_age(settings, redis_client, database_url, simulator):
    """The exact target: within a response's lifetime, no tag is called twice, whether its
    repeats come in later runs, in the same take, or while its first call is in flight."""
    simulator.latency = (0.05, 0.05)
    simulator.tag_age["#2PU"] = 30  # a shared cache held this one 30 s: still 30 s left
    tags = [("player", "#2PP"), ("clan", "#2PQ"), ("war", "#2PR"), ("player", "#2PU")]
    n = 0
    for _ in range(3):
        batch = []
        for kind, tag in tags * 3:
            n += 1
            batch.append(req(n, kind, tag))
        push(redis_client, settings, *batch)
        summary = drain(settings)
        assert summary.stopped == "queue_empty"
    assert simulator.calls_per_tag() == {tag: 1 for _, tag in tags}
    outcomes = [r["outcome"] for r in ledger(database_url) if r["outcome"] != "attempted"]
    assert outcomes.count("fetched") == 4 and outcomes.count("skipped-fresh") == n - 4


@pytest.mark.parametrize(
    ("cache_control", "sim_age"),
    [(None, None), ("max-age=banana", None), ("max-age=60", 60), ("max-age=60", 61), ("max-age=0", None)],
)
def test_an_answer_without_a_usable_lifetime_is_never_fresh(
    settings, redis_client, database_url, simulator, cache_control, sim_age
):
    simulator.cache_control["player"] = cache_control
    simulator.age = sim_age
    for i in range(2):
        push(redis_client, settings, req(i))
        assert drain(settings).counts == {"attempted": 1, "fetched": 1}
    assert simulator.calls_per_tag() == {"#2PP": 2}
    assert [r["changed"] for r in ledger(database_url) if r["outcome"] == "fetched"] == [True, False]


def test_a_snapshot_is_called_again_once_its_lifetime_is_over(
    settings, redis_client, database_url, simulator
):
    simulator.age = 59  # one second of max-age=60 left
    push(redis_client, settings, req(1))
    drain(settings)
    # Wait on Postgres's clock, the one the gate reads, not on ours.
    deadline = time.monotonic() + 30
    while query(database_url, "SELECT fresh_until > now() AS fresh FROM players")[0]["fresh"]:
        assert time.monotonic() < deadline, "the snapshot stayed fresh for 30 s"
        time.sleep(0.1)
    push(redis_client, settings, req(2))
    assert drain(settings).counts == {"attempted": 1, "fetched": 1}
    assert simulator.calls_per_tag() == {"#2PP": 2}


@pytest.mark.parametrize("how", ["policy", "FRESHNESS=off"])
def test_freshness_off_calls_every_request(worker_env, settings, redis_client, database_url, simulator, how):
    if how == "policy":
        policy = DrainPolicy(checks=True, freshness=False)
    else:  # the setting wins over any policy a caller passes
        settings, policy = Settings.from_env({**worker_env, "FRESHNESS": "off"}), DrainPolicy(checks=True)
    for i in range(2):
        push(redis_client, settings, req(i))
        assert drain(settings, policy=policy).counts == {"attempted": 1, "fetched": 1}
    assert simulator.calls_per_tag() == {"#2PP": 2}


def test_fetches_say_whether_the_body_changed_and_the_summary_counts_it_per_kind(
    settings, redis_client, database_url, simulator, monkeypatch
):
    now = [1000.0]
    monkeypatch.setattr(simulator, "clock", lambda: now[0])
    monkeypatch.setattr(simulator, "change_epoch", 1000.0)
    simulator.change_every["#2PQ"] = 10.0  # #2PQ changes every 10 s of the simulator's clock
    tags = [numbered_tag(i) for i in range(3)] + ["#2PQ"]
    off = DrainPolicy(checks=True, freshness=False)
    push(redis_client, settings, *[req(f"a{t}", "player", t) for t in tags])
    first = drain(settings, policy=off)
    assert first.as_dict()["fetch_changes"] == {"player": {"fetched": 4, "changed": 4, "share": 1.0}}
    now[0] += 10.0
    push(redis_client, settings, *[req(f"b{t}", "player", t) for t in tags], req("clan", "clan", "#2PQ"))
    second = drain(settings, policy=off)
    assert second.as_dict()["fetch_changes"] == {
        "player": {"fetched": 4, "changed": 1, "share": 0.25},
        "clan": {"fetched": 1, "changed": 1, "share": 1.0},
    }
    changed = {r["tag"]: r["changed"] for r in ledger(database_url) if r["request_id"].startswith("b")}
    assert changed == {**{t: False for t in tags[:3]}, "#2PQ": True}
    # The stored summary, written with the run's last batch, counts that batch too.
    stored = query(database_url, "SELECT summary FROM refresh_run_summaries WHERE run_id = %s", second.run_id)
    assert stored[0]["summary"]["fetch_changes"] == second.as_dict()["fetch_changes"]


def test_crash_recovery_treats_skipped_fresh_as_settled(settings, redis_client, database_url, simulator):
    push(redis_client, settings, req(1))
    drain(settings)
    # A run that died after committing its skipped-fresh row, before acknowledging the item.
    item = encode(req(2))
    redis_client.rpush(QueueKeys(settings.queue.refresh_queue_key).inflight, item)
    query(
        database_url,
        "INSERT INTO refresh_ledger (request_id, run_id, kind, tag, outcome, reason, detail) "
        "VALUES ('2', gen_random_uuid(), 'player', '#2PP', 'skipped-fresh', 'fresh', 'died after this') "
        "RETURNING id",
    )
    summary = drain(settings)
    assert summary.recovered == {"already_settled": 1}
    assert inflight_items(redis_client, settings) == [] and queue_items(redis_client, settings) == []
    assert [r["outcome"] for r in ledger(database_url, "2")] == ["skipped-fresh"]
    assert simulator.calls_per_tag() == {"#2PP": 1}


# --- the migration ----------------------------------------------------------------------------


def test_migration_0009_keeps_old_rows_and_its_checks_hold(empty_database_url, tmp_path):
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if int(path.name[:4]) < 9:
            (tmp_path / path.name).write_text(path.read_text())
    migrate(empty_database_url, tmp_path)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO players (tag, data, fetched_at) VALUES ('#2PP', '{\"a\": 1}', now())")
        conn.execute(
            "INSERT INTO refresh_ledger (request_id, run_id, kind, tag, outcome) "
            "VALUES ('old', gen_random_uuid(), 'player', '#2PP', 'fetched')"
        )
    migrate(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        assert conn.execute("SELECT fresh_until, data_hash FROM players").fetchone() == (None, None)
        assert conn.execute("SELECT changed FROM refresh_ledger").fetchone() == (None,)
        insert = (
            "INSERT INTO refresh_ledger (request_id, run_id, kind, tag, outcome, reason, changed) "
            "VALUES ('new', gen_random_uuid(), 'player', '#2PP', %s, %s, %s)"
        )
        conn.execute(insert, ("skipped-fresh", "fresh", None))
        conn.execute(insert, ("fetched", None, False))
        for bad in (
            ("skipped-fresh", None, None),
            ("failed", "not_found", True),
            ("skipped-stale", "x", None),
        ):
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(insert, bad)
        # The first refresh after the migration has no hash to compare with: a change, once.
        health = conn.execute("SELECT skipped_fresh, fetch_changes FROM refresh_health").fetchone()
        assert health == (1, {"player": {"fetched": 1, "changed": 0, "share": 0}})
