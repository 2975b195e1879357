"""Ledger invariants over random batches of queue items (hypothesis; real Postgres, Redis, simulator).

Each example pushes a random mix of valid requests (some sharing a tag), 404 tags, private
war logs, malformed payloads and at most one request whose tag the API answers 500 for,
onto a queue key of its own, then drains until the queue is empty with a random policy
(sometimes bounded by `max_requests`, so one batch spans several runs). Then, reading only
Postgres, Redis and the simulator's call log:

* every dequeued request has exactly one terminal row in each run that took it, and exactly
  one settling row overall, with the outcome its kind of item calls for (valid: fetched the
  first time its kind and tag is called, `skipped-fresh` for every repeat, all of them inside
  the API's max-age: one 200 call per kind and tag; 404: failed not_found; private war log:
  failed private_war_log; malformed: failed with its parse error and never attempted; the 500
  tag: failed upstream_error after exactly `max_tries` attempts, all in one run);
* `failed` is never retried: no row and no API call for a request after its `failed` row;
* the number of terminal rows in a run equals the items it took off the queue
  (`RunSummary.taken`), and the summary's counts equal the ledger's;
* `fetched` implies the snapshot exists and holds the API's body, and its `fetched_at`
  (when the worker received the response) is at least the `occurred_at` of the request's
  last `attempted` row and at most the `occurred_at` of its `fetched` row. With several
  fetched requests for one tag, the snapshot is the newest fetch: its `fetched_at` is at
  least the latest of their attempts and lies within one request's attempt..fetched span;
* first attempts within each run follow queue order; the queue and in-flight list end empty.

The database is shared by the examples (each uses its own request ids, tags and queue key)
and every check is over the example's own requests and runs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coclib.coc_api import CocApi
from coclib.db import Database
from coclib.keys import QueueKeys
from coclib.queue import RefreshQueue
from coclib.testing.simulator import max_calls_in_window
from tests.conftest import TEST_TOKEN
from tests.helpers import RecordingLimiter
from tests.invariants import (
    KINDS,
    MALFORMED,
    RequestFactory,
    World,
    check_append_only,
    check_calls,
    check_conservation,
    check_outcomes,
    check_request_histories,
    check_run_order,
    check_summary,
    fresh_tag,
    raw_id,
    read_world,
    run_rows,
)
from worker.drain import Drain, DrainPolicy

RATE = 30


items_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("valid"), st.sampled_from(KINDS), st.integers(0, 5)),  # 6 tag slots: repeats
        st.tuples(st.just("not_found"), st.sampled_from(KINDS), st.none()),
        st.tuples(st.just("private"), st.just("war"), st.none()),
        st.tuples(st.just("malformed"), st.none(), st.sampled_from(sorted(MALFORMED))),
    ),
    min_size=1,
    max_size=40,
)
policies = st.builds(
    DrainPolicy,
    max_in_flight=st.integers(1, 32),
    dispatch_batch=st.integers(1, 8),
    prefetch=st.integers(1, 64),
    flush_rows=st.integers(1, 64),
    flush_interval=st.sampled_from([0.01, 0.1, 0.5]),
    max_tries=st.integers(1, 3),
    retry_backoff=st.just(0.01),
    finish_reserve=st.just(0.1),
    max_requests=st.one_of(st.none(), st.integers(1, 15)),
    checks=st.just(True),
)


def _filtered(world: World, ids: set[str], runs: set[str], keys: set[tuple[str, str]]) -> World:
    """The world restricted to one example's requests, runs and snapshots."""
    return World(
        [r for r in world.rows if r["request_id"] in ids],
        world.queue,
        world.inflight,
        world.calls,
        {k: v for k, v in world.snapshots.items() if k in keys},
        {k: v for k, v in world.summaries.items() if k in runs},
        world.lease,
        open_attempts=[r for r in world.open_attempts if r["request_id"] in ids],
    )


async def _drain_until_empty(database_url, redis_url, keys, base_url, policy, max_runs):
    client = aioredis.Redis.from_url(redis_url)
    db = await Database.open(database_url)
    limiter = RecordingLimiter(RATE)
    api = await CocApi.connect(base_url=base_url, limiter=limiter, tokens=(TEST_TOKEN,))
    queue = RefreshQueue(client, keys)
    summaries, starts = [], []
    try:
        for _ in range(max_runs):
            queued, _, inflight = await queue.sizes()
            if not queued and not inflight:
                break
            starts.append(await client.lrange(keys.queue, 0, -1))

            async def connect():
                return api

            drain = Drain(queue=queue, db=db, connect_api=connect, limiter=limiter, policy=policy)
            summaries.append(await drain.run(time.monotonic() + 30))
    finally:
        await api.close()
        await db.close()
        await client.aclose()
    return summaries, starts, limiter


@pytest.mark.slow
@pytest.mark.timeout(900)  # a failure is shrunk for up to 5 minutes: let it report
def test_ledger_invariants_over_random_batches(database_url, redis_url, simulator):
    sync = redis.Redis.from_url(redis_url)
    simulator.latency = (0.0, 0.005)

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(specs=items_strategy, policy=policies, flaky_at=st.one_of(st.none(), st.integers(0, 40)))
    def check(specs, policy, flaky_at):
        simulator.clear_calls()
        keys = QueueKeys(f"{{coc:ledger:{uuid.uuid4().hex[:12]}}}:queue")
        factory = RequestFactory()
        pool = [fresh_tag() for _ in range(6)]
        items = []
        for category, kind, option in specs:
            if category == "malformed":
                items.append(factory.malformed(option))
                continue
            item = factory.request(category, kind, pool[option] if category == "valid" else None)
            if category == "not_found":
                simulator.not_found.add(item.tag)
            elif category == "private":
                simulator.private_war_log.add(item.tag)
            items.append(item)
        flaky = None
        if flaky_at is not None:
            # At most one: several requests failing in a row would (rightly) open the circuit.
            flaky = factory.request("valid", "player")
            simulator.tag_status[flaky.tag] = 500
            items.insert(min(flaky_at, len(items)), flaky)
        by_id = {i.id: i for i in items}
        assert len(by_id) == len(items)
        sync.rpush(keys.queue, *[i.raw for i in items])
        before = read_world(database_url, sync, keys, [])

        bound = policy.max_requests or len(items)
        max_runs = -(-len(items) // bound) + 2
        summaries, starts, limiter = asyncio.run(
            _drain_until_empty(database_url, redis_url, keys, simulator.base_url, policy, max_runs)
        )

        raw_world = read_world(database_url, sync, keys, simulator.calls)
        check_append_only(before.rows, raw_world.rows)
        runs = {s.run_id for s in summaries}
        snapshot_keys = {(i.kind, i.tag) for i in items if i.kind}
        world = _filtered(raw_world, set(by_id), runs, snapshot_keys)
        try:
            assert world.queue == [] and world.inflight == [], "drains did not empty the queue"
            assert world.lease is None
            check_conservation(world, by_id, inflight_allowed=False)
            check_request_histories(world, finished_runs=runs)
            check_calls(world, by_id)
            check_outcomes(world, by_id, interrupted_limit=policy.interrupted_limit)
            # The rate, on the limiter's clock; and every call the API saw went through it.
            assert max_calls_in_window(limiter.starts, 1.0) <= RATE
            assert len(simulator.calls) <= len(limiter.starts)

            taken_total = 0
            for summary, start in zip(summaries, starts, strict=True):
                check_summary(world, summary)
                check_run_order(world, summary.run_id, [raw_id(r) for r in start])
                rows = run_rows(world, summary.run_id)
                terminal = [r for r in rows if r["outcome"] != "attempted"]
                # Every item taken off the queue got exactly one terminal row in this run.
                assert len(terminal) == summary.taken == len({r["request_id"] for r in terminal})
                if policy.max_requests is not None:
                    assert summary.taken <= policy.max_requests
                taken_total += summary.taken
            # Each item was taken once per run it was in; nothing was taken that was not pushed.
            terminal_all = [r for r in world.rows if r["outcome"] != "attempted"]
            assert taken_total == len(terminal_all)

            for item in items:
                settles = world.settling(item.id)
                assert len(settles) == 1, f"{item.id} has {len(settles)} settling rows"
                row = settles[0]
                rows = world.rows_of(item.id)
                attempts = [r for r in rows if r["outcome"] == "attempted"]
                if item is flaky:
                    assert (row["outcome"], row["reason"]) == ("failed", "upstream_error")
                    assert len(attempts) == policy.max_tries
                    assert len({r["run_id"] for r in attempts}) == 1
                    statuses = [c.status for c in world.calls if c.tag == item.tag]
                    assert statuses == [500] * policy.max_tries
                    continue
                if item.category == "valid" and row["outcome"] == "skipped-fresh":
                    # Its kind and tag was fetched a moment ago: settled without an attempt.
                    assert row["reason"] == "fresh" and not attempts, (item.id, rows)
                    continue
                expected = {
                    "valid": ("fetched", None),
                    "not_found": ("failed", "not_found"),
                    "private": ("failed", "private_war_log"),
                    "malformed": ("failed", item.reason),
                }[item.category]
                assert (row["outcome"], row["reason"]) == expected, (item, row)
                if item.category != "malformed":
                    # No transient faults here: one attempt, one call, and only one.
                    assert len(attempts) == 1, (item.id, rows)
                if row["outcome"] == "failed":
                    # Never retried: the failed row is the request's last row, and the API
                    # never heard of the tag again (check_calls checks the times too).
                    assert rows[-1] is row
            # Only the flaky tag met a server error, only valid tags got 200s: each kind and tag
            # once, whatever the repeats (the freshness gate: all of this is inside max-age).
            valid = [i for i in items if i.category == "valid" and i is not flaky]
            keys_ = {(i.kind, i.tag) for i in valid}
            assert Counter((c.kind, c.tag) for c in world.calls if c.status == 200) == dict.fromkeys(keys_, 1)
            fetched = Counter(
                (i.kind, i.tag) for i in valid if world.settling(i.id)[0]["outcome"] == "fetched"
            )
            assert fetched == dict.fromkeys(keys_, 1)
        finally:
            if flaky is not None:
                simulator.tag_status.pop(flaky.tag, None)
            keys_left = sync.keys(keys.queue.split("}")[0] + "}*")
            if keys_left:
                sync.delete(*keys_left)

    try:
        check()
    finally:
        sync.close()
