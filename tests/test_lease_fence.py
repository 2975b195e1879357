"""A drain that stalls past its lease's TTL, and the drain that takes the lease meanwhile.

Two real drains on one queue, real Redis, Postgres and the simulator. Drain A stalls with items
in flight: its process freezes (here its event loop, in a thread of its own, blocked inside its
first API call, as a long pause, a paused VM or SIGSTOP would), so it renews nothing and its
lease lapses. Drain B takes the lease, recovers A's items (A has not died as far as anyone can
tell) and takes them again; B's calls are held while A wakes, finds its lease gone and winds
down. A must change nothing in Redis: B's in-flight copies stay where they are, nothing goes
back to the queue behind B's back, so B settles each request once in its run, and nothing is
lost. Without the fence A's acknowledgement and put-back find B's copies (the items are the
same bytes) and remove them, and B takes what A put back a second time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable

import redis.asyncio as aioredis

from coclib.coc_api import CocApi
from coclib.db import Database
from coclib.keys import QueueKeys
from coclib.queue import RefreshQueue
from coclib.ratelimit import RateLimiter
from ledger.outcomes import SETTLING
from tests.conftest import TEST_TOKEN
from tests.invariants import TERMINAL, RequestFactory, read_world
from tests.test_handover import until
from worker.drain import Drain, DrainPolicy, RunSummary

N = 6
RATE = 30
LEASE_MS = 10_000  # the drain lease's TTL (`coclib.lease.Lease`)
FROZEN_AT_MOST = 120  # a bound on a test that never thaws A (it failed), not a timing
# A takes every item, but starts only two calls: at the stall it holds calls and prefetched items,
# so waking up it has calls to acknowledge and prefetched items to put back.
POLICY_A = DrainPolicy(checks=True, prefetch=N, max_in_flight=2, dispatch_batch=2)
# B starts a call for every item it takes: all of them are in its in-flight list while A winds down.
POLICY_B = DrainPolicy(checks=True, prefetch=N, max_in_flight=N, dispatch_batch=N)


class _Freezes:
    """A's API client. Its first call freezes the whole drain (it blocks the thread the drain's
    event loop runs on: no lease renewal, nothing) until the test thaws it."""

    def __init__(self, api: CocApi, frozen: threading.Event, thaw: threading.Event) -> None:
        self.api, self.frozen, self.thaw = api, frozen, thaw

    async def fetch(self, kind: str, tag: str, **options):
        if not self.frozen.is_set():
            self.frozen.set()
            if not self.thaw.wait(FROZEN_AT_MOST):
                raise AssertionError("drain A was never thawed")
        return await self.api.fetch(kind, tag, **options)


class _Holds:
    """B's API client: each call waits (the loop running on) until the test lets them all go."""

    def __init__(self, api: CocApi) -> None:
        self.api = api
        self.waiting = 0
        self.go = asyncio.Event()

    async def fetch(self, kind: str, tag: str, **options):
        self.waiting += 1
        await self.go.wait()
        return await self.api.fetch(kind, tag, **options)


async def _drain(
    redis_url: str,
    database_url: str,
    keys: QueueKeys,
    base_url: str,
    policy: DrainPolicy,
    wrap: Callable[[CocApi], object],
) -> RunSummary:
    """One run of a drain with its own Redis client, pool, limiter and API client (as another
    Lambda container has them), calling the API through `wrap(api)`."""
    client = aioredis.Redis.from_url(redis_url)
    db = await Database.open(database_url)
    limiter = RateLimiter(RATE)
    api = await CocApi.connect(base_url=base_url, limiter=limiter, tokens=(TEST_TOKEN,))
    wrapped = wrap(api)

    async def connect():
        return wrapped

    drain = Drain(
        queue=RefreshQueue(client, keys), db=db, connect_api=connect, limiter=limiter, policy=policy
    )
    try:
        return await drain.run(time.monotonic() + 60)
    finally:
        await api.close()
        await db.close()
        await client.aclose()


def test_a_drain_that_wakes_after_losing_its_lease_touches_nothing_of_its_successors(
    redis_url, redis_client, database_url, simulator
):
    keys = QueueKeys(f"{{coc:fence:{time.time_ns()}}}:queue")
    factory = RequestFactory()
    items = [factory.request("valid", "player") for _ in range(N)]
    ids = {i.id for i in items}
    redis_client.rpush(keys.queue, *[i.raw for i in items])

    frozen, thaw = threading.Event(), threading.Event()
    ended: dict[str, object] = {}

    def run_a() -> None:
        try:
            ended["a"] = asyncio.run(
                _drain(
                    redis_url,
                    database_url,
                    keys,
                    simulator.base_url,
                    POLICY_A,
                    lambda api: _Freezes(api, frozen, thaw),
                )
            )
        except BaseException as exc:  # kept to say so: a drain must not end this way
            ended["a_error"] = exc

    seen: dict[str, list[bytes]] = {}

    async def go() -> RunSummary:
        a = threading.Thread(target=run_a, name="drain-a")
        a.start()
        try:
            await until(lambda: frozen.is_set() or not a.is_alive())
            assert a.is_alive(), f"drain A ended before it stalled: {ended}"
            seen["a_held"] = redis_client.lrange(keys.inflight, 0, -1)
            # A renews nothing while frozen (renewals are a second apart: wait until it has
            # missed one, so that waking up, its renewer finds out at once, as after a real
            # stall). Its lease would lapse 10 s after the last renewal: expire it now, exactly
            # as the expiry would (the crash-recovery tests do the same for a dead run).
            await until(lambda: redis_client.pttl(keys.lease) < LEASE_MS - 1500)
            redis_client.delete(keys.lease)

            holds: list[_Holds] = []

            def hold(api: CocApi) -> _Holds:
                holds.append(_Holds(api))
                return holds[0]

            b = asyncio.ensure_future(
                _drain(redis_url, database_url, keys, simulator.base_url, POLICY_B, hold)
            )
            await until(lambda: (holds and holds[0].waiting >= N) or b.done())
            assert not b.done(), f"drain B ended before it called: {b.result()}"
            seen["b_held"] = redis_client.lrange(keys.inflight, 0, -1)
            seen["queue_then"] = redis_client.lrange(keys.queue, 0, -1)

            thaw.set()  # A wakes up, B's calls still held
            await asyncio.to_thread(a.join, FROZEN_AT_MOST)
            assert not a.is_alive(), "drain A did not wind down"
            seen["b_held_after_a"] = redis_client.lrange(keys.inflight, 0, -1)
            seen["queue_after_a"] = redis_client.lrange(keys.queue, 0, -1)

            holds[0].go.set()
            return await b
        finally:
            thaw.set()
            a.join(FROZEN_AT_MOST)

    b_summary = asyncio.run(go())
    world = read_world(database_url, redis_client, keys, simulator.calls)

    assert "a_error" not in ended, repr(ended.get("a_error"))
    a_summary: RunSummary = ended["a"]
    assert sorted(seen["a_held"]) == sorted(i.raw for i in items), "A did not stall holding every item"
    # B recovered A's items and took them again: they are B's now.
    assert b_summary.recovered == {"requeued": N}, b_summary
    assert sorted(seen["b_held"]) == sorted(i.raw for i in items) and seen["queue_then"] == []

    # No request has two terminal rows in one run (the flaky failure: B settled a request twice).
    terminal = Counter((r["request_id"], str(r["run_id"])) for r in world.rows if r["outcome"] in TERMINAL)
    twice = {key: n for key, n in terminal.items() if n > 1}
    assert not twice, f"requests with several terminal rows in one run: {twice}"
    # A, waking, touched none of B's in-flight copies and put nothing back behind B's back.
    assert seen["b_held_after_a"] == seen["b_held"], "drain A moved items drain B holds"
    assert seen["queue_after_a"] == [], "drain A put items back that drain B holds"
    # Nothing lost: B settled every request, once in its run, and left nothing behind.
    b_settled = Counter(
        r["request_id"]
        for r in world.rows
        if r["outcome"] in SETTLING and str(r["run_id"]) == b_summary.run_id
    )
    assert b_settled == dict.fromkeys(ids, 1), b_settled
    assert world.queue == [] and world.inflight == [] and world.priority == []
    assert b_summary.stopped == "queue_empty", b_summary
    # A stopped for its lost lease and left everything it held for the lease holder.
    assert (a_summary.stopped, a_summary.cause) == ("lease_lost", "lease_lost"), a_summary
    assert a_summary.items.get("left") == N, a_summary.items
    assert world.lease is None
