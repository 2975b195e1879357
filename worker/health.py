"""GET /health: probe Postgres and Redis side by side, each within a time budget, and judge.

The rules live in `ledger.health` (documented there). This module gathers their inputs:
the `refresh_health` row from Postgres, and from Redis the queue and in-flight lengths, the
oldest queued request's `enqueued_at` (LINDEX 0) and whether the drain lease is held.
Everything it sends to Redis is a read: health never takes the lease and never moves,
adds or removes an item.

Why each probe runs as its own task, abandoned (not awaited) when its budget runs out:
cancelling a psycopg query that hangs makes psycopg try to cancel it on the server and wait
up to 10 s for that; cancelling a redis-py read can block on the socket as well. Health must
answer within 2 s whatever the dependencies do, so it stops waiting instead of cleaning up
in line. An abandoned probe finishes (or fails) in the background on the warm event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from redis.exceptions import RedisError

from coclib.db import Database
from coclib.errors import CocLibError
from coclib.errortext import describe, first_line
from coclib.keys import QueueKeys
from coclib.redis_client import AsyncRedis, redis_fault
from ledger.health import UNHEALTHY, HealthRules, QueueState, assess, ledger_stats

log = logging.getLogger(__name__)

T = TypeVar("T")

# Each probe's budget. Both run at once, so health answers in about this long at worst,
# well inside the 2 s promised to load balancers and uptime checks.
PROBE_BUDGET_SECONDS = 1.5
_abandoned: set[asyncio.Task[Any]] = set()  # keeps abandoned probes alive until they end


@dataclass
class HealthReport:
    """The answer to GET /health: `http_status` 200 or 503 and the JSON body."""

    status: str
    http_status: int
    body: dict[str, Any] = field(default_factory=dict)


async def check_health(
    *,
    db: Callable[[], Awaitable[Database]],
    redis: Callable[[], Awaitable[AsyncRedis]],
    keys: QueueKeys,
    rules: HealthRules | None = None,
    budget: float = PROBE_BUDGET_SECONDS,
    clock: Callable[[], float] = time.time,
) -> HealthReport:
    """Probe both dependencies within `budget` seconds each, in parallel, and judge health."""
    started = time.monotonic()
    pg, rd = await asyncio.gather(
        _bounded("postgres", _read_ledger(db, budget), budget),
        _bounded("redis", _read_redis(redis, keys), budget),
    )
    ledger, pg_check = pg
    queue, redis_check = rd
    problems = [
        f"{name}: {check['error']}"
        for name, check in (("postgres", pg_check), ("redis", redis_check))
        if not check["ok"]
    ]
    now = clock()
    status, reasons = assess(ledger, queue, now=now, rules=rules, problems=problems)
    body: dict[str, Any] = {
        "status": status,
        "reasons": reasons,
        "timestamp": round(now, 3),
        "queue_size": queue.queue_size if queue else None,
        "priority_queue_size": queue.priority_queue_size if queue else None,
        "inflight_size": queue.inflight_size if queue else None,
        "oldest_queued_age_seconds": queue.oldest_queued_age_seconds if queue else None,
        "draining": queue.draining if queue else None,
        "ledger": ledger,
        "checks": {"postgres": pg_check, "redis": redis_check},
        "duration_ms": round((time.monotonic() - started) * 1000, 1),
    }
    if status == UNHEALTHY:
        log.warning("health: unhealthy", extra={"reasons": reasons})
    return HealthReport(status, 503 if status == UNHEALTHY else 200, body)


async def _read_ledger(db: Callable[[], Awaitable[Database]], budget: float) -> dict[str, Any]:
    database = await db()
    # Give up on the pool a little before the budget, so a Postgres that refuses reads as
    # the pool's "couldn't get a connection" rather than as a silent one.
    return await ledger_stats(database, timeout=budget * 0.8)


async def _read_redis(redis: Callable[[], Awaitable[AsyncRedis]], keys: QueueKeys) -> QueueState:
    # Connecting (and telling a cluster from a single node) counts against the probe's budget.
    return await read_queue(await redis(), keys)


async def read_queue(
    redis: AsyncRedis, keys: QueueKeys, *, clock: Callable[[], float] = time.time
) -> QueueState:
    """Both lanes' and the in-flight lengths, the oldest request's age, whether the lease is
    held. Reads only."""
    # Five reads in one slot, pipelined: one round trip on a single node and on a cluster.
    async with redis.pipeline(transaction=False) as pipe:
        pipe.llen(keys.queue)
        pipe.llen(keys.inflight)
        pipe.lindex(keys.queue, 0)
        pipe.exists(keys.lease)
        pipe.llen(keys.priority)
        queued, inflight, head, leased, urgent = await pipe.execute()
    return QueueState(
        queue_size=int(queued),
        inflight_size=int(inflight),
        priority_queue_size=int(urgent),
        oldest_queued_age_seconds=_age_of(head, clock()),
        draining=bool(leased),
    )


def _age_of(raw: bytes | None, now: float) -> float | None:
    # The head is the oldest request (FIFO; put-backs return to the head with their original
    # enqueued_at). A malformed head or one without enqueued_at has no known age.
    if raw is None:
        return None
    try:
        enqueued_at = orjson.loads(raw).get("enqueued_at")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if isinstance(enqueued_at, bool) or not isinstance(enqueued_at, int | float):
        return None
    return round(max(0.0, now - enqueued_at), 3)


async def _bounded(name: str, probe: Awaitable[T], budget: float) -> tuple[T | None, dict[str, Any]]:
    """Run `probe` for at most `budget` seconds: (its result, a check record)."""
    started = time.monotonic()
    task = asyncio.ensure_future(probe)
    done, _ = await asyncio.wait({task}, timeout=budget)
    ms = round((time.monotonic() - started) * 1000, 1)
    if not done:
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_forget)
        return None, {"ok": False, "ms": ms, "error": f"no answer within {budget:g} s"}
    exc = task.exception()
    if exc is not None:
        # Our own errors already say what failed; a driver's needs its class to be understood.
        if isinstance(exc, RedisError):
            error = redis_fault(exc)[1]  # with what to fix, when Redis is configured wrong
        else:
            error = first_line(exc) if isinstance(exc, CocLibError) else describe(exc)
        return None, {"ok": False, "ms": ms, "error": error}
    return task.result(), {"ok": True, "ms": ms}


def _forget(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log "exception was never retrieved"
