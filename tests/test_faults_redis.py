"""Redis faults that are configuration, not outages: a queue key of another type, OOM, READONLY.

Issue 24, scenario 2: an operator put a hash where the queue was. The put-back script removed an
item from the in-flight list, failed pushing it to the queue, and Redis does not undo a script's
earlier writes: the item was in no list and never settled. Every script that moves items now
checks its lists before it writes anything, and each kind of refusal has its own reason code.
"""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis

from coclib.keys import QueueKeys
from coclib.queue import RefreshQueue, RefreshRequest, enqueue, parse_item
from coclib.reasons import Reason
from coclib.redis_client import async_client, redis_fault
from coclib.testing.tags import numbered_tag
from ledger.health import QueueState, assess
from tests.helpers import drain, inflight_items, ledger, outcomes, push
from tests.redis_servers import Node, free_port, redis_binary
from worker.drain import DrainPolicy
from worker.runtime import Worker

KEYS = QueueKeys("{coc:refresh}:queue")

# Another type at a list's key, as an operator or a stray producer might leave it.
WRONG_TYPES = {
    "hash": lambda r, key: r.hset(key, "field", "value"),
    "string": lambda r, key: r.set(key, "value"),
    "set": lambda r, key: r.sadd(key, "member"),
    "zset": lambda r, key: r.zadd(key, {"member": 1}),
}


def _every_list_item(client: redis.Redis) -> list[bytes]:
    """Every item in the queue family's lists (a key of another type holds none)."""
    items = []
    for key in (KEYS.queue, KEYS.inflight, KEYS.dead_letter):
        if client.type(key) == b"list":
            items += client.lrange(key, 0, -1)
    return sorted(items)


def _take_three(redis_url: str, client: redis.Redis) -> tuple[RefreshQueue, list]:
    for n in range(3):
        enqueue(client, "player", numbered_tag(n), keys=KEYS)

    async def take():
        queue = RefreshQueue(aioredis.from_url(redis_url), KEYS)
        return queue, await queue.take(3)

    return asyncio.run(take())


@pytest.mark.parametrize("wrong", WRONG_TYPES)
@pytest.mark.parametrize(
    ("operation", "key"),
    [("put_back", "queue"), ("dead_letter", "dead_letter"), ("take", "inflight")],
)
def test_a_list_key_of_another_type_loses_nothing(redis_url, redis_client, operation, key, wrong):
    queue, taken = _take_three(redis_url, redis_client)
    if operation == "take":  # items waiting in the queue, and the in-flight list is something else
        queue.redis = aioredis.from_url(redis_url)
        asyncio.run(queue.put_back(taken))
    before = _every_list_item(redis_client)
    assert len(before) == 3
    WRONG_TYPES[wrong](redis_client, getattr(KEYS, key))

    async def act():
        queue.redis = aioredis.from_url(redis_url)  # a loop of its own
        try:
            if operation == "take":
                await queue.take(3)
            else:
                await getattr(queue, operation)(taken)
        finally:
            await queue.redis.aclose()

    with pytest.raises(redis.ResponseError) as raised:
        asyncio.run(act())
    assert _every_list_item(redis_client) == before, "an item was lost between two lists"
    reason, detail = redis_fault(raised.value)
    assert reason is Reason.REDIS_WRONG_TYPE
    assert getattr(KEYS, key) in detail and wrong in detail


def test_enqueue_to_a_queue_of_another_type_leaves_no_marker(redis_client):
    """A marker set for a push that failed would silently refuse the request for an hour."""
    redis_client.hset(KEYS.queue, "field", "value")
    with pytest.raises(redis.ResponseError) as raised:
        enqueue(redis_client, "clan", "#2PP", keys=KEYS)
    assert redis_fault(raised.value)[0] is Reason.REDIS_WRONG_TYPE
    redis_client.delete(KEYS.queue)
    assert enqueue(redis_client, "clan", "#2PP", keys=KEYS) is not None
    assert redis_client.llen(KEYS.queue) == 1


@pytest.fixture
def own_redis(tmp_path):
    """A Redis server of this test's own: its configuration is changed, which the shared one
    must never be."""
    port = free_port()
    args = ["--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    node = Node(redis_binary("redis-server"), tmp_path, port, args)
    node.start()
    yield node
    node.stop()


def _take_error(url: str) -> redis.RedisError:
    async def take():
        client = aioredis.from_url(url)
        try:
            await RefreshQueue(client, KEYS).take(1)
        finally:
            await client.aclose()

    with pytest.raises(redis.RedisError) as raised:
        asyncio.run(take())
    return raised.value


def test_redis_errors_are_named_by_kind(own_redis):
    url = f"redis://127.0.0.1:{own_redis.port}/0"
    with own_redis.client() as client:
        client.rpush(KEYS.queue, *[f"item-{n}".encode() * 100 for n in range(50)])
        # Out of memory with noeviction: a script that writes is refused before it starts.
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        reason, detail = redis_fault(_take_error(url))
        assert reason is Reason.REDIS_OUT_OF_MEMORY and "maxmemory" in detail
        client.config_set("maxmemory", 0)
        # A replica (of a primary that is not even there): every write is refused.
        client.replicaof("127.0.0.1", free_port())
        reason, detail = redis_fault(_take_error(url))
        assert reason is Reason.REDIS_READ_ONLY and "replica" in detail
        client.replicaof("NO", "ONE")
    # A dead server is an outage.
    own_redis.stop()
    assert redis_fault(_take_error(url))[0] is Reason.REDIS_UNAVAILABLE


class _OperatorAtTheQueue(RefreshQueue):
    """The queue as the worker sees it, with an operator who, right after the run's first take,
    moves what is left of the queue aside and puts a hash at its key (issue 24's probe)."""

    aside = "{coc:refresh}:queue:aside"
    swapped = False

    async def take(self, n: int, **lanes) -> list:
        taken = await super().take(n, **lanes)
        if taken and not self.swapped:
            self.swapped = True
            await self.redis.rename(self.keys.queue, self.aside)
            await self.redis.hset(self.keys.queue, "operator", "was here")
        return taken


def test_a_hash_at_the_queue_mid_run_loses_nothing_and_names_the_fault(
    settings, redis_client, database_url, simulator
):
    requests = [RefreshRequest(f"r{n}", "player", numbered_tag(n), 1_700_000_000.0) for n in range(20)]
    push(redis_client, settings, *requests)
    policy = DrainPolicy(prefetch=8, max_in_flight=4, checks=True)
    simulator.latency = (0.2, 0.3)  # the first calls are still out when the next take fails

    async def first_run():
        worker = Worker(settings, policy=policy)
        worker._queue = _OperatorAtTheQueue(await async_client(settings.queue), worker.keys)
        try:
            return await worker.drain(30)
        finally:
            await worker.close()

    summary = asyncio.run(first_run())

    # Every request is settled, or waiting in a list (the aside copy, the in-flight list).
    settled = {r["request_id"] for r in ledger(database_url) if r["outcome"] in ("fetched", "failed")}
    listed = redis_client.lrange(_OperatorAtTheQueue.aside, 0, -1) + inflight_items(redis_client, settings)
    waiting = {parse_item(raw).request_id for raw in listed}
    assert {r.id for r in requests} - settled - waiting == set(), "requests lost"
    assert (summary.stopped, summary.cause) == ("circuit_open", "redis_wrong_type"), summary
    assert KEYS.queue in summary.detail

    # The operator puts the queue back; the next run recovers the rest and settles each once.
    redis_client.delete(KEYS.queue)
    redis_client.rename(_OperatorAtTheQueue.aside, KEYS.queue)
    assert drain(settings, policy=policy).stopped == "queue_empty"
    for request in requests:
        settling = [o for o, _ in outcomes(database_url, request.id) if o in ("fetched", "failed")]
        assert settling == ["fetched"], (request.id, outcomes(database_url, request.id))


@pytest.mark.parametrize("cause", ["redis_wrong_type", "redis_out_of_memory", "redis_read_only"])
def test_health_says_a_redis_fault_is_configuration(cause):
    ledger_stats = {"last_run_stopped": "circuit_open", "last_run_cause": cause}
    queue = QueueState(queue_size=0, inflight_size=0, oldest_queued_age_seconds=None, draining=False)
    status, reasons = assess(ledger_stats, queue, now=0.0)
    assert status == "degraded"
    assert any(cause in r and "Redis configuration" in r for r in reasons), reasons


def test_health_reads_a_queue_key_of_another_type_as_configuration(settings, redis_client, database_url):
    redis_client.hset(KEYS.queue, "operator", "was here")

    async def health():
        worker = Worker(settings)
        try:
            return await worker.health()
        finally:
            await worker.close()

    report = asyncio.run(health())
    assert report.http_status == 503
    assert "WRONGTYPE" in report.body["checks"]["redis"]["error"]
    assert "another type than a list" in report.body["checks"]["redis"]["error"]


def test_a_lease_key_of_another_type_is_named_not_taken_for_a_running_drain(
    settings, redis_client, simulator
):
    """SET NX fails on any existing key: without the check, every run would say `lease_held`."""
    push(redis_client, settings, RefreshRequest("r0", "player", "#2PP", 1_700_000_000.0))
    redis_client.hset(KEYS.lease, "operator", "was here")

    summary = drain(settings, policy=DrainPolicy(checks=True))

    assert (summary.stopped, summary.cause) == ("circuit_open", "redis_wrong_type"), summary
    assert KEYS.lease in summary.detail
    assert redis_client.llen(KEYS.queue) == 1  # nothing taken
