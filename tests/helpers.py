"""Small aids shared by the tests: run a drain, read the ledger, push raw items."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg.rows import dict_row

from coclib.keys import QueueKeys
from coclib.migrations import discover, migrate
from coclib.queue import RefreshRequest, encode
from coclib.ratelimit import RateLimiter
from coclib.settings import Settings
from worker.drain import DrainPolicy, RunSummary
from worker.runtime import Worker

# Every drain a test runs checks the tracker's books after every step.
CHECKED = DrainPolicy(checks=True)


def drain(settings: Settings, seconds: float = 30.0, policy: DrainPolicy = CHECKED) -> RunSummary:
    """One complete run with a fresh Worker, as a cold Lambda would do it."""

    async def go() -> RunSummary:
        worker = Worker(settings, policy=policy)
        try:
            return await worker.drain(seconds)
        finally:
            await worker.close()

    return asyncio.run(go())


def push(client: redis.Redis, settings: Settings, *items: RefreshRequest | bytes) -> None:
    """RPUSH requests (encoded) or raw payloads, as a producer would."""
    keys = QueueKeys(settings.queue.refresh_queue_key)
    client.rpush(keys.queue, *[i if isinstance(i, bytes) else encode(i) for i in items])


def queue_items(client: redis.Redis, settings: Settings) -> list[bytes]:
    return client.lrange(QueueKeys(settings.queue.refresh_queue_key).queue, 0, -1)


def inflight_items(client: redis.Redis, settings: Settings) -> list[bytes]:
    return client.lrange(QueueKeys(settings.queue.refresh_queue_key).inflight, 0, -1)


def ledger(url: str, request_id: str | None = None) -> list[dict[str, Any]]:
    """Ledger rows in insertion order, optionally for one request."""
    with psycopg.connect(url, row_factory=dict_row) as conn:
        if request_id is None:
            return conn.execute("SELECT * FROM refresh_ledger ORDER BY id").fetchall()
        return conn.execute(
            "SELECT * FROM refresh_ledger WHERE request_id = %s ORDER BY id", (request_id,)
        ).fetchall()


def outcomes(url: str, request_id: str) -> list[tuple[str, str | None]]:
    """(outcome, reason) pairs of one request, in order."""
    return [(r["outcome"], r["reason"]) for r in ledger(url, request_id)]


def query(url: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(sql, params or None).fetchall()


class RecordingLimiter(RateLimiter):
    """The worker's limiter, noting each start on its own clock as the start happens.

    The rate promise is judged on these times: they are what the limiter controls. The
    simulator's arrival times add the network and a thread that shares the GIL with the drain,
    and on a loaded machine they bunch up for reasons that are not the limiter's.
    """

    def __init__(self, rate: float) -> None:
        super().__init__(rate)
        self.starts: list[float] = []

    async def acquire(self, *, priority: bool = False) -> None:
        await super().acquire(priority=priority)
        self.starts.append(self._clock())


def migrate_before(url: str, version: int, directory: Path) -> list[str]:
    """Apply only the migrations older than `version`, as on a database made before it was
    written: copies of them in `directory` (made if need be). Returns the files applied."""
    directory.mkdir(exist_ok=True)
    for migration in discover():
        if migration.version < version:
            shutil.copy(migration.path, directory)
    return migrate(url, directory)
