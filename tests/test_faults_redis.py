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
from coclib.queue import RefreshQueue, enqueue
from coclib.reasons import Reason
from coclib.redis_client import redis_fault
from coclib.testing.tags import numbered_tag
from tests.redis_servers import Node, free_port, redis_binary

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
