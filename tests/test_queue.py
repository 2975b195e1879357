"""Tags, queue items and the queue's two sides against a real Redis."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from coclib.errors import InvalidRequestError, InvalidTagError
from coclib.keys import QueueKeys
from coclib.queue import (
    MAX_ITEM_BYTES,
    LeaseLost,
    RefreshQueue,
    RefreshRequest,
    encode,
    enqueue,
    parse_item,
    request_id_for,
)
from coclib.tags import TAG_ALPHABET, normalise_tag, parse_tag

KEYS = QueueKeys("{coc:refresh}:queue")


@pytest.mark.parametrize(
    ("raw", "tag"), [("#2pp", "#2PP"), ("  2PP ", "#2PP"), ("#2poo", "#2P00"), ("#QUV0", "#QUV0")]
)
def test_tags_are_normalised_the_coc_way(raw, tag):
    assert parse_tag(raw) == tag


@pytest.mark.parametrize("raw", ["", "#", "#2P", "#ABC", "#2PP!", "#" + "2" * 15, 42, None])
def test_impossible_tags_are_rejected(raw):
    with pytest.raises(InvalidTagError):
        parse_tag(raw)


# The game's digits as users type them too: lower case, the letter O, spaces, the #.
@given(st.text(alphabet=TAG_ALPHABET + TAG_ALPHABET.lower() + "oO #", min_size=0, max_size=20))
def test_normalisation_is_idempotent(raw):
    once = normalise_tag(raw)
    assert normalise_tag(once) == once


def test_items_without_id_get_a_stable_one():
    raw = b'{"kind": "clan", "tag": "#2pp"}'
    first, again = parse_item(raw), parse_item(raw)
    assert first.request.id == again.request.id == request_id_for(raw)
    assert first.request.tag == "#2PP"


def test_a_malformed_item_keeps_its_own_id_when_it_has_one():
    item = parse_item(b'{"id": "abc", "kind": "village", "tag": "#2PP"}')
    assert item.request is None and item.request_id == "abc"
    assert isinstance(item.error, InvalidRequestError) and "village" in item.error.detail


def test_oversized_items_are_refused_before_parsing():
    item = parse_item(b'{"kind": "player", "tag": "#2PP", "x": "' + b"a" * MAX_ITEM_BYTES + b'"}')
    assert item.error.reason == "invalid_request" and "bytes" in item.error.detail


def test_enqueue_sets_id_and_time_and_deduplicates_waiting_requests(redis_client):
    first = enqueue(redis_client, "player", "#2pp", keys=KEYS)
    second = enqueue(redis_client, "player", "#2PP", keys=KEYS)
    other_kind = enqueue(redis_client, "clan", "#2PP", keys=KEYS)
    assert first and second is None and other_kind
    items = [orjson.loads(raw) for raw in redis_client.lrange(KEYS.queue, 0, -1)]
    assert [(i["id"], i["kind"], i["tag"]) for i in items] == [
        (first, "player", "#2PP"),
        (other_kind, "clan", "#2PP"),
    ]
    assert all(isinstance(i["enqueued_at"], float) for i in items)


def test_enqueue_refuses_bad_input_at_once(redis_client):
    with pytest.raises(InvalidTagError):
        enqueue(redis_client, "player", "#nope!", keys=KEYS)
    with pytest.raises(InvalidRequestError):
        enqueue(redis_client, "village", "#2PP", keys=KEYS)
    assert redis_client.llen(KEYS.queue) == 0


def test_take_moves_to_inflight_and_frees_the_dedupe_marker(redis_url, redis_client):
    first = enqueue(redis_client, "player", "#2PP", keys=KEYS)

    async def go():
        client = aioredis.Redis.from_url(redis_url)
        queue = RefreshQueue(client, KEYS)
        taken = await queue.take(10)
        await client.aclose()
        return taken

    taken = asyncio.run(go())
    assert [t.request.id for t in taken] == [first]
    assert redis_client.llen(KEYS.queue) == 0 and redis_client.llen(KEYS.inflight) == 1
    # Being fetched is not waiting: a new request for the same tag is queued.
    assert enqueue(redis_client, "player", "#2PP", keys=KEYS)


@given(st.lists(st.integers(0, 9), min_size=1, max_size=12), st.data())
def test_put_back_restores_original_order_at_the_head(redis_base_url, items, data):
    async def go():
        client = aioredis.Redis.from_url(redis_base_url)  # each example clears its own keys
        await client.delete(KEYS.queue, KEYS.inflight)
        raws = [
            orjson.dumps({"id": f"r{i}-{n}", "kind": "player", "tag": "#2PP"}) for i, n in enumerate(items)
        ]
        await client.rpush(KEYS.queue, *raws, b"tail")
        queue = RefreshQueue(client, KEYS)
        taken = await queue.take(len(raws))
        done = data.draw(st.lists(st.sampled_from(taken), unique_by=lambda t: t.seq))
        await queue.ack(done)
        rest = [t for t in taken if t not in done]
        await queue.put_back(list(reversed(rest)))  # order given does not matter: take order wins
        queued = await client.lrange(KEYS.queue, 0, -1)
        inflight = await client.lrange(KEYS.inflight, 0, -1)
        await client.aclose()
        return raws, [t.raw for t in rest], queued, inflight

    raws, rest, queued, inflight = asyncio.run(go())
    assert queued == [r for r in raws if r in rest] + [b"tail"]
    assert inflight == []


# -- the priority lane ------------------------------------------------------------------


def lane_ids(client, key: str) -> list[str]:
    return [orjson.loads(raw)["id"] for raw in client.lrange(key, 0, -1)]


def test_priority_requests_go_to_their_lane_and_dedupe_covers_both_lanes(redis_client):
    waiting = enqueue(redis_client, "player", "#2PP", keys=KEYS)
    # Someone is waiting for #2PP: it must not wait behind the queue's copy.
    urgent = enqueue(redis_client, "player", "#2PP", keys=KEYS, priority=True)
    again = enqueue(redis_client, "player", "#2PP", keys=KEYS, priority=True)
    other = enqueue(redis_client, "clan", "#2PP", keys=KEYS, priority=True)
    # A request for the queue while one waits in the priority lane: that one comes sooner.
    late = enqueue(redis_client, "clan", "#2PP", keys=KEYS)

    assert waiting and urgent and other and again is None and late is None
    assert lane_ids(redis_client, KEYS.queue) == [waiting]
    assert lane_ids(redis_client, KEYS.priority) == [urgent, other]


def test_take_serves_the_priority_lane_first_and_frees_its_marker(redis_url, redis_client):
    plain = [enqueue(redis_client, "player", tag, keys=KEYS) for tag in ("#2PP", "#2PQ")]
    urgent = [enqueue(redis_client, "clan", tag, keys=KEYS, priority=True) for tag in ("#2PP", "#2PR")]

    async def go():
        client = aioredis.Redis.from_url(redis_url)
        queue = RefreshQueue(client, KEYS)
        first = await queue.take(1, priority=1)
        rest = await queue.take(5, priority=5)
        found = await queue.inflight()
        await client.aclose()
        return first, rest, found

    first, rest, found = asyncio.run(go())
    assert [(t.request_id, t.lane) for t in first] == [(urgent[0], "priority"), (plain[0], "queue")]
    assert [(t.request_id, t.lane) for t in rest] == [(urgent[1], "priority"), (plain[1], "queue")]
    # Recovery reads each item's lane back from the in-flight list.
    assert [(t.request_id, t.lane) for t in found] == [
        (urgent[0], "priority"),
        (plain[0], "queue"),
        (urgent[1], "priority"),
        (plain[1], "queue"),
    ]
    assert enqueue(redis_client, "clan", "#2PP", keys=KEYS, priority=True)  # taken: no longer waiting


def test_a_malformed_priority_item_is_taken_as_malformed_from_its_lane(redis_url, redis_client):
    redis_client.rpush(KEYS.priority, b"\xff not json")

    async def go():
        client = aioredis.Redis.from_url(redis_url)
        queue = RefreshQueue(client, KEYS)
        taken = await queue.take(0, priority=5)
        found = await queue.inflight()
        await client.aclose()
        return taken, found

    taken, found = asyncio.run(go())
    assert [(t.raw, t.lane, t.error.reason) for t in taken] == [
        (b"\xff not json", "priority", "invalid_request")
    ]
    assert [(t.raw, t.lane) for t in found] == [(b"\xff not json", "priority")]


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 9)), min_size=1, max_size=12), st.data())
def test_put_back_returns_each_item_to_the_head_of_its_own_lane_in_order(redis_base_url, items, data):
    async def go():
        client = aioredis.Redis.from_url(redis_base_url)
        await client.delete(KEYS.queue, KEYS.priority, KEYS.inflight)
        raws = {
            lane: [
                orjson.dumps({"id": f"r{i}-{n}", "kind": "player", "tag": "#2PP"})
                for i, (urgent, n) in enumerate(items)
                if urgent == (lane == "priority")
            ]
            for lane in ("queue", "priority")
        }
        for lane, key in (("queue", KEYS.queue), ("priority", KEYS.priority)):
            await client.rpush(key, *raws[lane], b"tail")
        queue = RefreshQueue(client, KEYS)
        taken = await queue.take(len(raws["queue"]), priority=len(raws["priority"]))
        if data.draw(st.booleans()):  # or as crash recovery finds them
            taken = await queue.inflight()
        done = data.draw(st.lists(st.sampled_from(taken), unique_by=lambda t: t.seq))
        await queue.ack(done)
        rest = [t for t in taken if t not in done]
        await queue.put_back(list(reversed(rest)))  # order given does not matter: take order wins
        lanes = {
            lane: await client.lrange(key, 0, -1)
            for lane, key in (("queue", KEYS.queue), ("priority", KEYS.priority))
        }
        inflight = await client.lrange(KEYS.inflight, 0, -1)
        await client.aclose()
        return raws, {t.raw for t in rest}, lanes, inflight

    raws, rest, lanes, inflight = asyncio.run(go())
    for lane in ("queue", "priority"):
        assert lanes[lane] == [r for r in raws[lane] if r in rest] + [b"tail"]
    assert inflight == []


# -- the fence: a drain's changes to the in-flight list need its lease ---------------------


def family(client, keys: QueueKeys) -> dict[bytes, bytes]:
    """Every key of the queue's family (lists, markers, lease) as DUMP serialises it."""
    return {key: client.dump(key) for key in client.keys(keys.derived("*")) + client.keys(keys.queue)}


async def take_ack_dead_letter_put_back(queue: RefreshQueue) -> list[bytes]:
    """Each change to the in-flight list once: take four, then acknowledge one, dead-letter one
    and put two back. Returns what was taken, as held in flight."""
    taken = await queue.take(3, priority=1)
    await queue.ack(taken[:1])
    await queue.dead_letter(taken[1:2])
    await queue.put_back(taken[2:])
    return [t.held for t in taken]


def fill(client, keys: QueueKeys) -> None:
    """The same items in both lanes of any queue, with their de-duplication markers."""
    plain = [RefreshRequest(f"p{n}", "player", tag, 1.0) for n, tag in enumerate(("#2PP", "#2PQ", "#2PR"))]
    client.rpush(keys.queue, *[encode(r) for r in plain])
    client.rpush(keys.priority, encode(RefreshRequest("u0", "clan", "#2PP", 1.0)))
    for request in plain:
        client.set(keys.pending(request.kind, request.tag), 1)
    client.set(keys.pending_priority("clan", "#2PP"), 1)


@pytest.mark.parametrize("now", [b"run-b keeps", None], ids=["taken-by-another", "lapsed"])
def test_a_fenced_queue_whose_lease_is_gone_changes_nothing_and_says_so(redis_url, redis_client, now):
    fill(redis_client, KEYS)
    redis_client.set(KEYS.lease, "run-a yields")

    async def go():
        client = aioredis.Redis.from_url(redis_url)
        try:
            queue = RefreshQueue(client, KEYS).fenced("run-a yields")
            taken = await queue.take(2, priority=1)  # its lease still holds: taken
            if now is None:
                await client.delete(KEYS.lease)
            else:
                await client.set(KEYS.lease, now)
            before = family(redis_client, KEYS)
            refused = []
            for attempt in (
                queue.take(5, priority=5),
                queue.ack(taken[:1]),
                queue.dead_letter(taken[1:2]),
                queue.put_back(taken),
            ):
                with pytest.raises(LeaseLost) as lost:
                    await attempt
                refused.append(lost.value.operation)
                assert family(redis_client, KEYS) == before, f"a refused {refused[-1]} changed Redis"
            return taken, refused
        finally:
            await client.aclose()

    taken, refused = asyncio.run(go())

    assert refused == ["take", "ack", "dead_letter", "put_back"]
    assert redis_client.lrange(KEYS.inflight, 0, -1) == [t.held for t in taken]
    assert redis_client.get(KEYS.lease) == now


def test_a_fenced_queue_holding_its_lease_does_what_an_unfenced_one_does(redis_url, redis_client):
    fenced_keys = QueueKeys("{coc:fenced}:queue")
    for keys in (KEYS, fenced_keys):
        fill(redis_client, keys)
    redis_client.set(fenced_keys.lease, "run-a yields")

    async def go():
        client = aioredis.Redis.from_url(redis_url)
        try:
            plain = await take_ack_dead_letter_put_back(RefreshQueue(client, KEYS))
            fenced = await take_ack_dead_letter_put_back(
                RefreshQueue(client, fenced_keys).fenced("run-a yields")
            )
            return plain, fenced
        finally:
            await client.aclose()

    plain, fenced = asyncio.run(go())

    assert plain == fenced and len(plain) == 4
    for name in ("queue", "priority", "inflight", "dead_letter"):
        lists = [redis_client.lrange(getattr(keys, name), 0, -1) for keys in (KEYS, fenced_keys)]
        assert lists[0] == lists[1], name
    waiting = [
        [bool(redis_client.exists(keys.pending("player", tag))) for tag in ("#2PP", "#2PQ", "#2PR")]
        for keys in (KEYS, fenced_keys)
    ]
    assert waiting[0] == waiting[1] == [False, True, True]  # taken, then put back (#2PQ, #2PR)
    assert redis_client.get(fenced_keys.lease) == b"run-a yields"  # the fence only reads it
