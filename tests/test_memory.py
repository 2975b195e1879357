"""A run's memory is bounded by the requests in its hands, not by how many it took.

A full 295-second run at 30/s takes about 8,850 requests, and real player bodies run 25-35 KB:
a run that kept the body of every request it settled would need hundreds of MB. The test
drains a few thousand requests with 23 KB bodies, and near the end of the run counts the
objects still alive that hold a body or a request (retained objects, not RSS: nothing here
depends on the machine's speed or its allocator).
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid

import redis.asyncio as aioredis

from coclib.coc_api import CocApi, Fetched
from coclib.db import Database
from coclib.keys import QueueKeys
from coclib.queue import RefreshQueue, RefreshRequest, Taken, encode
from coclib.ratelimit import RateLimiter
from coclib.snapshots import Snapshot
from coclib.testing.tags import numbered_tag
from ledger.writer import Entry
from tests.conftest import TEST_TOKEN
from tests.helpers import ledger
from worker.drain import Drain, DrainPolicy
from worker.tracker import Item

REQUESTS = 2000
BODY_BYTES = 23_000
# Classes whose instances hold a body or a taken request. However the run is tuned, it holds
# at most a prefetch, the calls in flight and a batch of each.
HOLDERS = (Snapshot, Fetched, Entry, Item, Taken)


def _alive() -> dict[str, int]:
    gc.collect()  # what nothing refers to any more is not retained, even inside a cycle
    counts = dict.fromkeys((cls.__name__ for cls in HOLDERS), 0)
    for obj in gc.get_objects():
        if isinstance(obj, HOLDERS):
            counts[type(obj).__name__] += 1
    return counts


def test_a_long_run_does_not_keep_what_it_settled(settings, redis_url, redis_client, database_url, simulator):
    simulator.player_bytes = BODY_BYTES
    keys = QueueKeys(settings.refresh_queue_key)
    ids = [uuid.uuid4().hex for _ in range(REQUESTS)]
    redis_client.rpush(
        keys.queue,
        *[encode(RefreshRequest(rid, "player", numbered_tag(i + 10**5))) for i, rid in enumerate(ids)],
    )
    policy = DrainPolicy(checks=True)
    window = policy.prefetch + policy.max_in_flight + 2 * policy.flush_rows
    seen: list[dict[str, int]] = []

    def on_progress(counts) -> None:
        # Once, when most requests are settled: what is alive now is what the run holds.
        if not seen and counts.get("fetched", 0) >= REQUESTS * 3 // 4:
            seen.append(_alive())

    async def go():
        aredis = aioredis.Redis.from_url(redis_url)
        db = await Database.open(database_url)
        # A limiter far above the API's 30/s: the simulator answers at once, and the run's length
        # in requests, not seconds, is what the test is about.
        limiter = RateLimiter(5000)
        api = await CocApi.connect(base_url=simulator.base_url, limiter=limiter, tokens=(TEST_TOKEN,))

        async def connect() -> CocApi:
            return api

        try:
            drain = Drain(
                queue=RefreshQueue(aredis, keys),
                db=db,
                connect_api=connect,
                limiter=limiter,
                policy=policy,
                on_progress=on_progress,
            )
            return await drain.run(time.monotonic() + 300)
        finally:
            await api.close()
            await db.close()
            await aredis.aclose()

    summary = asyncio.run(go())
    assert summary.counts.get("fetched") == REQUESTS, summary
    assert len(ledger(database_url)) == 2 * REQUESTS
    assert seen, "the run never reported its progress"
    alive = seen[0]
    # Without the bound, every settled request keeps its Item, Taken, Entry and Snapshot (and
    # so its 23 KB body): about 1,500 of each at this point.
    assert sum(alive.values()) <= 5 * window, alive
    assert alive["Snapshot"] + alive["Fetched"] <= window, alive
