"""The priority lane and linger in the drain, with real Redis, Postgres and the simulator.

What is judged is what can be seen from outside: the order of `attempted` rows (the order the
drain started calls in), which run wrote them, and the Redis lists.
"""

from __future__ import annotations

import asyncio
import itertools

import redis
from hypothesis import given
from hypothesis import strategies as st

from coclib.keys import QueueKeys
from coclib.queue import PRIORITY_MARK, RefreshRequest, encode, enqueue
from tests.helpers import drain, ledger, push
from tests.invariants import fresh_tag
from tests.test_handover import until
from worker.drain import DrainPolicy
from worker.lanes import LaneShare
from worker.runtime import Worker

CHECKED = DrainPolicy(checks=True)


def requests(prefix: str, n: int) -> list[RefreshRequest]:
    return [RefreshRequest(f"{prefix}{i}", "player", fresh_tag(), 1.0) for i in range(n)]


def push_priority(client: redis.Redis, settings, *items: RefreshRequest | bytes) -> None:
    keys = QueueKeys(settings.queue.refresh_queue_key)
    client.rpush(keys.priority, *[i if isinstance(i, bytes) else encode(i) for i in items])


def first_attempts(database_url: str) -> list[str]:
    seen: dict[str, None] = {}
    for row in ledger(database_url):
        if row["outcome"] == "attempted":
            seen.setdefault(row["request_id"], None)
    return list(seen)


def longest_priority_stretch_before_a_queue_call(order: list[str]) -> int:
    """The longest run of consecutive priority calls (ids starting with p) that a queue call
    (ids starting with q) follows later."""
    last_queue = max((k for k, r in enumerate(order) if r.startswith("q")), default=-1)
    best = stretch = 0
    for request_id in order[:last_queue]:
        stretch = stretch + 1 if request_id.startswith("p") else 0
        best = max(best, stretch)
    return best


def test_priority_requests_overtake_the_backlog_each_lane_in_order(
    settings, redis_client, database_url, simulator
):
    backlog, urgent = requests("q", 60), requests("p", 5)
    push(redis_client, settings, *backlog)
    push_priority(redis_client, settings, *urgent)

    summary = drain(settings, policy=CHECKED)

    assert summary.stopped == "queue_empty" and summary.counts.get("fetched") == 65, summary
    order = first_attempts(database_url)
    assert order[:5] == [r.id for r in urgent]  # the priority lane first, in its order
    assert [r for r in order if r.startswith("q")] == [r.id for r in backlog]
    keys = QueueKeys(settings.queue.refresh_queue_key)
    assert redis_client.llen(keys.priority) == redis_client.llen(keys.inflight) == 0


def test_a_flood_of_priority_requests_leaves_the_queue_its_share(
    settings, redis_client, database_url, simulator
):
    backlog, flood = requests("q", 8), requests("p", 90)
    push(redis_client, settings, *backlog)
    push_priority(redis_client, settings, *flood)

    summary = drain(settings, policy=CHECKED)

    assert summary.stopped == "queue_empty" and summary.counts.get("fetched") == 98, summary
    order = first_attempts(database_url)
    # At least one call in nine went to the queue while it had work waiting (a tenth over any stretch).
    assert longest_priority_stretch_before_a_queue_call(order) <= 8, order
    assert [r for r in order if r.startswith("p")] == [r.id for r in flood]
    assert [r for r in order if r.startswith("q")] == [r.id for r in backlog]


def test_a_malformed_priority_item_fails_and_the_rest_goes_on(
    settings, redis_client, database_url, simulator
):
    good = requests("p", 1)[0]
    push_priority(redis_client, settings, b'{"id": "bad-1", "kind": "village", "tag": "#2PP"}', good)

    summary = drain(settings, policy=CHECKED)

    assert summary.counts.get("failed") == 1 and summary.counts.get("fetched") == 1, summary
    bad = [(r["outcome"], r["reason"]) for r in ledger(database_url, "bad-1")]
    assert bad == [("failed", "invalid_request")]


def test_recovery_returns_each_item_to_its_own_lane_and_the_priority_lane_goes_first(
    settings, redis_client, database_url, simulator
):
    # What a run killed mid-way leaves in the in-flight list: items of both lanes, in take order.
    p1, q1, p2 = (
        RefreshRequest("p1", "player", fresh_tag()),
        *requests("q", 1),
        RefreshRequest("p2", "clan", fresh_tag()),
    )
    keys = QueueKeys(settings.queue.refresh_queue_key)
    redis_client.rpush(keys.inflight, PRIORITY_MARK + encode(p1), encode(q1), PRIORITY_MARK + encode(p2))
    push(redis_client, settings, *requests("q", 3)[1:])

    summary = drain(settings, policy=CHECKED)

    assert summary.recovered == {"requeued": 3}, summary
    assert summary.counts.get("fetched") == 5
    assert first_attempts(database_url)[:2] == ["p1", "p2"]


@given(
    lanes=st.lists(st.booleans(), max_size=80),
    groups=st.lists(st.integers(1, 12), min_size=1, max_size=40),
)
def test_lane_share_keeps_each_lanes_order_and_the_queues_ninth(lanes, groups):
    """Pure: whatever the group sizes, priority first, each lane in order, and never more than
    eight priority picks in a row while the queue has candidates."""
    urgent = [f"p{i}" for i, u in enumerate(lanes) if u]
    plain = [f"q{i}" for i, u in enumerate(lanes) if not u]
    share = LaneShare()
    picked: list[str] = []
    for n in itertools.cycle(groups):
        left_u = [x for x in urgent if x not in picked]
        left_q = [x for x in plain if x not in picked]
        if not left_u and not left_q:
            break
        group = share.pick(left_u, left_q, n)
        assert group, "nothing picked though candidates wait"
        picked += group
    assert [x for x in picked if x.startswith("p")] == urgent
    assert [x for x in picked if x.startswith("q")] == plain
    assert longest_priority_stretch_before_a_queue_call(picked) <= 8  # at least one in nine
    if urgent and plain:
        assert picked[0].startswith("p")


# -- linger -------------------------------------------------------------------------------


def test_a_lingering_run_picks_up_a_request_pushed_after_the_lanes_ran_dry_and_still_hands_over(
    settings, redis_client, database_url, simulator
):
    keys = QueueKeys(settings.queue.refresh_queue_key)
    push(redis_client, settings, RefreshRequest("first", "player", fresh_tag(), 1.0))
    policy = DrainPolicy(checks=True, linger=600.0)

    def settled(request_id: str):
        def check() -> bool:
            return any(r["outcome"] == "fetched" for r in ledger(database_url, request_id))

        check.__doc__ = f"{request_id} fetched"
        return check

    def lanes_dry() -> bool:
        """both lanes and the in-flight list empty"""
        return not (
            redis_client.llen(keys.queue)
            or redis_client.llen(keys.priority)
            or redis_client.llen(keys.inflight)
        )

    async def go():
        first, second = Worker(settings, policy=policy), Worker(settings, policy=policy)
        try:
            running = asyncio.ensure_future(first.drain(120, scheduled=True))
            await until(settled("first"))
            await until(lanes_dry)
            # The lanes are dry and the run has nothing to do. A user presses "refresh".
            with redis.Redis.from_url(settings.queue.redis_url) as producer:
                urgent = enqueue(producer, "clan", fresh_tag(), keys=keys, priority=True)
            await until(lambda: settled(urgent)() or running.done())
            still_running = not running.done()
            # A newer scheduled invocation still takes over from a lingering run.
            successor = await second.drain(3, scheduled=True)
            return urgent, still_running, await running, successor
        finally:
            await first.close()
            await second.close()

    urgent, still_running, summary, successor = asyncio.run(go())

    assert still_running, f"the run returned instead of lingering: {summary}"
    rows = ledger(database_url, urgent)
    assert [r["outcome"] for r in rows] == ["attempted", "fetched"]
    assert {str(r["run_id"]) for r in rows} == {summary.run_id}  # the lingering run fetched it
    assert summary.stopped == "handed_over", summary
    assert successor.took_over_from == summary.run_id


def test_without_linger_a_scheduled_run_returns_when_the_lanes_are_empty(settings, simulator):
    async def go():
        worker = Worker(settings, policy=DrainPolicy(checks=True, linger=0.0))
        try:
            return await worker.drain(60, scheduled=True)
        finally:
            await worker.close()

    summary = asyncio.run(go())
    assert summary.stopped == "queue_empty" and summary.taken == 0
