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
from coclib.queue import MAX_ITEM_BYTES, RefreshQueue, enqueue, parse_item, request_id_for
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
