"""Hand-over: a newer scheduled drain takes over from a running one, with real Redis, Postgres
and the simulator. Two workers in one process stand for two Lambda containers (each has its
own Redis client, pool, API client and rate limiter); one test uses a real second process and
SIGKILLs it.

What must hold whatever the timing: no request is lost or settled twice, no API call is made
twice, the queue keeps its order, and the two drains never call the API at the same time
(every call the first drain made arrived before the first call of the second). Backlogs are far
larger than any drain here can finish and drains end at short deadlines, so a slow machine
changes how much is drained, never which drain is running when another arrives.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import redis.asyncio as aioredis
from redis.exceptions import TimeoutError as RedisTimeoutError

from coclib.keys import QueueKeys
from coclib.lease import Lease
from coclib.queue import RefreshRequest
from tests.helpers import ledger, push, query, queue_items
from tests.invariants import check_run_order, fresh_tag, raw_id, read_world, run_rows
from worker.drain import DrainPolicy, RunSummary
from worker.runtime import Worker

POLICY = DrainPolicy(checks=True)
BACKLOG = 1500  # 50 s of work at 30/s: no drain here runs out of it
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def backlog(redis_client, settings, n: int) -> list[str]:
    ids = [f"h{i}" for i in range(n)]
    push(redis_client, settings, *[RefreshRequest(i, "player", fresh_tag(), 1.0) for i in ids])
    return ids


async def until(predicate, *, within: float = 60.0, every: float = 0.02) -> None:
    """Wait for an event (never a fixed sleep); fail loudly if it never comes.

    The predicate runs in a thread: it may block (a query waiting for a lock a drain on this
    loop holds), and the loop must go on meanwhile.
    """
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {within} s for {predicate.__doc__ or predicate}")
        await asyncio.sleep(every)


def attempts(database_url: str) -> int:
    """attempted rows written"""
    return query(database_url, "SELECT count(*) AS n FROM refresh_ledger WHERE outcome = 'attempted'")[0]["n"]


def check_nothing_lost_or_repeated(world, ids: list[str], before: list[bytes]) -> None:
    """Each request settled at most once and each tag called at most once; what is not settled
    is back in the queue, in its order; nothing is left in flight."""
    settled = Counter(r["request_id"] for r in world.rows if r["outcome"] in ("fetched", "failed"))
    assert set(settled.values()) <= {1}, settled.most_common(3)
    assert set(settled) <= set(ids)
    calls = Counter(c.tag for c in world.calls)
    assert set(calls.values()) <= {1}, f"calls made twice: {[t for t, n in calls.items() if n > 1]}"
    assert world.queue == [raw for raw in before if raw_id(raw) not in settled]
    assert world.inflight == []


def check_the_seam(database_url: str, simulator, first: RunSummary, second: RunSummary) -> None:
    """The first run's calls all came before the second's."""
    rows = ledger(database_url)
    run_of = {r["tag"]: str(r["run_id"]) for r in rows if r["outcome"] == "attempted"}
    first_calls = [c.at for c in simulator.calls if run_of[c.tag] == first.run_id]
    second_calls = [c.at for c in simulator.calls if run_of[c.tag] == second.run_id]
    assert first_calls and second_calls
    assert max(first_calls) < min(second_calls), "the two drains called the API at the same time"


def test_a_scheduled_drain_takes_over_from_a_running_one(settings, redis_client, database_url, simulator):
    simulator.latency = (0.05, 0.15)
    ids = backlog(redis_client, settings, BACKLOG)
    before = queue_items(redis_client, settings)

    async def go() -> tuple[RunSummary, RunSummary]:
        first, second = Worker(settings, policy=POLICY), Worker(settings, policy=POLICY)
        try:
            running = asyncio.ensure_future(first.drain(60, scheduled=True))
            await until(lambda: attempts(database_url) >= 10)
            successor = await second.drain(4, scheduled=True)
            return await running, successor
        finally:
            await first.close()
            await second.close()

    first, second = asyncio.run(go())

    assert first.stopped == "handed_over" and first.cause == "handed_over"
    assert second.took_over_from == first.run_id and second.stopped == "deadline"
    assert not first.handover_failed
    check_the_seam(database_url, simulator, first, second)
    world = read_world(
        database_url, redis_client, QueueKeys(settings.queue.refresh_queue_key), simulator.calls
    )
    check_nothing_lost_or_repeated(world, ids, before)
    # What the first run took and did not call went back to the head, with its hand-over row.
    closing = {(r["outcome"], r["reason"]) for r in run_rows(world, first.run_id)}
    assert closing - {("attempted", None), ("fetched", None)} <= {("skipped-deadline", "handed_over")}
    # FIFO: in each run, first attempts follow the queue's original order.
    for run in (first, second):
        check_run_order(world, run.run_id, [raw_id(raw) for raw in before])
    stored = {str(run_id): summary for run_id, summary in _summaries(database_url)}
    assert stored[first.run_id]["stopped"] == "handed_over"
    assert stored[second.run_id]["took_over_from"] == first.run_id
    chain = query(database_url, "SELECT run_id::text, stopped, took_over_from::text FROM refresh_runs")
    assert {(r["run_id"], r["stopped"], r["took_over_from"]) for r in chain} == {
        (first.run_id, "handed_over", None),
        (second.run_id, "deadline", first.run_id),
    }
    assert world.lease is None


def _summaries(database_url: str) -> list[tuple[str, dict]]:
    return [
        (r["run_id"], r["summary"])
        for r in query(database_url, "SELECT run_id, summary FROM refresh_run_summaries")
    ]


@pytest.mark.parametrize(("running_scheduled", "newcomer_scheduled"), [(True, False), (False, True)])
def test_only_a_scheduled_drain_takes_over_and_only_from_a_scheduled_one(
    running_scheduled, newcomer_scheduled, settings, redis_client, database_url, simulator
):
    """An operator's drain or POST /refresh never preempts, and is never preempted."""
    simulator.latency = (0.05, 0.1)
    backlog(redis_client, settings, BACKLOG)
    keys = QueueKeys(settings.queue.refresh_queue_key)

    async def go() -> tuple[RunSummary, RunSummary, bool]:
        first, second = Worker(settings, policy=POLICY), Worker(settings, policy=POLICY)
        try:
            running = asyncio.ensure_future(first.drain(4, scheduled=running_scheduled))
            await until(lambda: attempts(database_url) >= 5)
            newcomer = await second.drain(60, scheduled=newcomer_scheduled)
            still_running = not running.done()
            return await running, newcomer, still_running
        finally:
            await first.close()
            await second.close()

    first, newcomer, still_running = asyncio.run(go())

    assert newcomer.stopped == "lease_held" and still_running  # it answered at once
    assert first.stopped == "deadline"  # not preempted
    assert redis_client.get(keys.successor) is None
    assert newcomer.run_id not in {str(r["run_id"]) for r in ledger(database_url)}


def test_a_second_successor_returns_at_once(settings, redis_client, database_url, simulator):
    simulator.latency = (0.05, 0.1)
    ids = backlog(redis_client, settings, BACKLOG)
    before = queue_items(redis_client, settings)
    keys = QueueKeys(settings.queue.refresh_queue_key)

    async def go() -> tuple[RunSummary, RunSummary, bool]:
        first, third = Worker(settings, policy=POLICY), Worker(settings, policy=POLICY)
        try:
            running = asyncio.ensure_future(first.drain(12, scheduled=True))
            await until(lambda: attempts(database_url) >= 5)
            # Another scheduled invocation already waits (it announced itself a moment ago).
            redis_client.set(keys.successor, "waiting-run yields", px=3000)
            late = await third.drain(60, scheduled=True)
            answered_while_running = not running.done()
            return await running, late, answered_while_running
        finally:
            await first.close()
            await third.close()

    first, late, answered_while_running = asyncio.run(go())

    assert late.stopped == "lease_held" and answered_while_running
    # The waiting successor never renewed the lease it was handed: the first invocation,
    # having handed over to nobody, drained on in a new run.
    runs = query(database_url, "SELECT run_id::text, stopped FROM refresh_run_summaries ORDER BY finished_at")
    assert [r["stopped"] for r in runs] == ["handed_over", "deadline"], runs
    assert first.run_id == runs[-1]["run_id"]
    world = read_world(database_url, redis_client, keys, simulator.calls)
    check_nothing_lost_or_repeated(world, ids, before)


_SUCCESSOR = """
import asyncio, sys
from coclib.settings import Settings
from worker.drain import DrainPolicy
from worker.runtime import Worker

async def main():
    worker = Worker(Settings.from_env(), policy=DrainPolicy(checks=True))
    try:
        await worker.drain(60, scheduled=True)
    finally:
        await worker.close()

asyncio.run(main())
"""


def test_a_successor_killed_after_announcing_itself_stalls_nothing(
    worker_env, settings, redis_client, database_url, simulator
):
    simulator.latency = (0.05, 0.1)
    ids = backlog(redis_client, settings, BACKLOG)
    before = queue_items(redis_client, settings)
    keys = QueueKeys(settings.queue.refresh_queue_key)
    env = {**os.environ, **worker_env, "PYTHONPATH": ROOT}

    async def go() -> RunSummary:
        first = Worker(settings, policy=DrainPolicy(checks=True))
        successor = None
        try:
            running = asyncio.ensure_future(first.drain(20, scheduled=True))
            await until(lambda: attempts(database_url) >= 5)
            successor = subprocess.Popen([sys.executable, "-c", _SUCCESSOR], env=env, cwd=ROOT)
            await until(lambda: redis_client.exists(keys.successor) or successor.poll() is not None)
            assert successor.poll() is None, "the successor exited before announcing itself"
            os.kill(successor.pid, signal.SIGKILL)  # as Lambda kills a container: no clean-up
            successor.wait()
            return await running
        finally:
            if successor is not None and successor.poll() is None:
                successor.kill()
            await first.close()

    last = asyncio.run(go())

    runs = query(database_url, "SELECT run_id::text, stopped FROM refresh_run_summaries ORDER BY finished_at")
    assert [r["stopped"] for r in runs] == ["handed_over", "deadline"], runs
    assert last.run_id == runs[-1]["run_id"]  # the same invocation drained on, in a new run
    world = read_world(database_url, redis_client, keys, simulator.calls)
    check_nothing_lost_or_repeated(world, ids, before)
    assert world.lease is None and redis_client.get(keys.successor) is None


class _CancelTurnedIntoError(aioredis.Redis):
    """A real client that, cancelled in the middle of EVAL, raises an error of its own instead:
    what redis-py did under load when the lease's renewer was stopped mid-command."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.armed = False  # set once the lease is held: the next EVAL is the renewer's
        self.in_eval = asyncio.Event()

    async def eval(self, script, numkeys, *args):
        if self.armed and not self.in_eval.is_set():
            self.in_eval.set()
            try:
                await asyncio.sleep(30)  # a command the cancellation lands in
            except asyncio.CancelledError:
                raise RedisTimeoutError("Timeout reading from socket") from None
        return await super().eval(script, numkeys, *args)


def test_the_lease_is_given_up_even_when_the_client_swallows_the_renewers_cancellation(redis_url, settings):
    keys = QueueKeys(settings.queue.refresh_queue_key)

    async def go() -> bool:
        client = _CancelTurnedIntoError.from_url(redis_url)
        lease = Lease(client, keys, owner="run-1", yields=True, renew_every=0.01)
        try:
            assert await lease.acquire()
            client.armed = True
            await client.in_eval.wait()  # the renewer is inside a command
            giving_up = asyncio.ensure_future(lease.give_up(last_start=None))
            # A bound on a hang (the renewer awaited forever), not a timing.
            await asyncio.wait({giving_up}, timeout=20)
            if not giving_up.done():
                giving_up.cancel()
                raise AssertionError("give_up never returned: the renewer outlived its cancellation")
            return bool(await client.exists(keys.lease))
        finally:
            await client.aclose()

    assert asyncio.run(go()) is False  # given up, not renewed on


def test_a_cancelled_drain_gives_its_lease_up(settings, redis_client, database_url, simulator):
    simulator.latency = (0.05, 0.1)
    backlog(redis_client, settings, BACKLOG)
    keys = QueueKeys(settings.queue.refresh_queue_key)

    async def go() -> None:
        worker = Worker(settings, policy=POLICY)
        try:
            running = asyncio.ensure_future(worker.drain(60, scheduled=True))
            await until(lambda: attempts(database_url) >= 5)
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
        finally:
            await worker.close()

    asyncio.run(go())

    assert redis_client.get(keys.lease) is None  # released at once, not left to expire
