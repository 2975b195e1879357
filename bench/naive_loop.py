"""The seed's drain read literally: one request at a time, start to finish.

    pop one item (LMOVE to the in-flight list) -> `attempted` row, commit -> fetch with
    coc.py -> upsert the snapshot and write the outcome row, commit -> acknowledge -> repeat

Built from the project's own pieces (queue parsing, `CocApi` with the wall-clock
`RateLimiter`, `Database`, `LedgerWriter`, snapshot upserts), so the only difference from
`worker.drain` is the shape: no concurrency, no batching. It is the baseline in
`bench/drain_bench.py`, not something to deploy: it does not handle deadlines, the circuit
breaker or crash recovery beyond putting a request back when the API is down.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

from coclib.coc_api import CocApi
from coclib.db import Database
from coclib.errors import RequestError, SystemicError, TransientError
from coclib.keys import QueueKeys
from coclib.queue import parse_item
from coclib.ratelimit import RateLimiter
from coclib.settings import Settings
from coclib.snapshots import Snapshot, snapshot_of
from ledger.outcomes import LedgerRow, Outcome
from ledger.writer import LedgerWriter


@dataclass
class NaiveResult:
    processed: int  # fetched + failed
    fetched: int
    api_calls: int
    seconds: float
    db_round_trips: int
    stopped: str


async def naive_drain(settings: Settings, *, max_requests: int, max_seconds: float) -> NaiveResult:
    """Drain one request at a time until the queue is empty, `max_requests` or `max_seconds`."""
    redis = aioredis.Redis.from_url(settings.queue.redis_url)
    keys = QueueKeys(settings.queue.refresh_queue_key)
    db = await Database.open(settings.database.database_url)
    limiter = RateLimiter(settings.api.coc_reqs_per_sec)
    api = await CocApi.connect(
        base_url=settings.api.coc_api_base_url,
        limiter=limiter,
        tokens=settings.api.coc_api_tokens,
        email=settings.api.coc_email,
        password=settings.api.coc_password,
        max_in_flight=1,
    )
    writer = LedgerWriter(db, uuid.uuid4())
    processed = fetched = 0
    stopped = "max_requests"
    started = time.monotonic()
    try:
        while processed < max_requests:
            if time.monotonic() - started >= max_seconds:
                stopped = "max_seconds"
                break
            raw = await redis.lmove(keys.queue, keys.inflight, "LEFT", "RIGHT")
            if raw is None:
                stopped = "queue_empty"
                break
            item = parse_item(raw)
            if item.error is not None:
                await writer.append(
                    [
                        LedgerRow(
                            item.request_id,
                            Outcome.FAILED,
                            reason=item.error.reason,
                            detail=item.error.detail,
                        )
                    ]
                )
                await redis.lrem(keys.inflight, 1, raw)
                processed += 1
                continue
            request = item.request
            await writer.append([LedgerRow(item.request_id, Outcome.ATTEMPTED, request.kind, request.tag)])
            snapshots: list[Snapshot] = []
            try:
                result = await api.fetch(request.kind, request.tag, timeout=10.0)
            except (TransientError, SystemicError) as exc:
                # The API is struggling: record it, put the request back, stop.
                await writer.append(
                    [
                        LedgerRow(
                            item.request_id,
                            Outcome.DEFERRED,
                            request.kind,
                            request.tag,
                            exc.reason,
                            exc.detail,
                        )
                    ]
                )
                async with redis.pipeline(transaction=True) as pipe:
                    pipe.lpush(keys.queue, raw)
                    pipe.lrem(keys.inflight, 1, raw)
                    await pipe.execute()
                stopped = "api_error"
                break
            except RequestError as exc:
                row = LedgerRow(
                    item.request_id,
                    Outcome.FAILED,
                    request.kind,
                    request.tag,
                    exc.reason,
                    exc.detail,
                    exc.http_status,
                )
            else:
                row = LedgerRow(
                    item.request_id,
                    Outcome.FETCHED,
                    request.kind,
                    request.tag,
                    http_status=result.http_status,
                    latency_ms=result.latency_ms,
                )
                snapshots.append(snapshot_of(request.kind, request.tag, result.raw, result.fetched_at))
                fetched += 1
            await writer.append([row], snapshots)
            await redis.lrem(keys.inflight, 1, raw)
            processed += 1
    finally:
        seconds = time.monotonic() - started
        await api.close()
        await db.close()
        await redis.aclose()
    return NaiveResult(processed, fetched, limiter.granted, seconds, db.round_trips, stopped)
