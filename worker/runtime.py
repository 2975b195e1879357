"""Builds the worker's collaborators from `Settings`, once per process (or warm Lambda container).

Secrets given by reference are read once per container, and rotated ones are picked up here,
around the drain: a run that halts on a fault a changed secret can cause (the database or Redis
refused the connection, the API refused the key, the portal the password) reads the referenced
secrets once more, and when one changed, reconnects with the new value and drains again within
the same invocation. So a rotation costs one halted run, not a container's life.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from coclib.coc_api import CocApi
from coclib.db import Database
from coclib.errors import ConfigError
from coclib.keys import QueueKeys
from coclib.migrations import migrate
from coclib.queue import RefreshQueue
from coclib.ratelimit import RateLimiter
from coclib.reasons import Reason
from coclib.redis_client import AsyncRedis, async_client
from coclib.settings import Settings
from ledger.health import HealthRules
from ledger.partitions import apply_retention, ledger_size
from worker.drain import Drain, DrainPolicy, RunSummary, StopCode
from worker.health import PROBE_BUDGET_SECONDS, HealthReport, check_health
from worker.lanes import QUEUE_SHARE_EVERY

log = logging.getLogger(__name__)

# The faults a rotated secret causes, and reading it again can cure: Postgres or Redis refused
# the connection (a changed password or user), the API refused the key (new tokens), the
# developer portal refused the password.
SECRET_FAULTS = frozenset(
    {Reason.DATABASE_UNAVAILABLE, Reason.REDIS_UNAVAILABLE, Reason.FORBIDDEN, Reason.CREDENTIALS}
)


@dataclass(frozen=True)
class RunReport:
    """One drain and the housekeeping after it: ledger retention and the ledger's size."""

    summary: RunSummary
    retention_days: int | None = None
    # Partitions retention dropped; None when retention is off, was skipped or failed.
    dropped_partitions: list[str] | None = None
    ledger: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The run summary with `retention` and `ledger_bytes` added (the handler's answer)."""
        out = self.summary.as_dict()
        out["retention"] = (
            None
            if self.retention_days is None
            else {"days": self.retention_days, "dropped_partitions": self.dropped_partitions}
        )
        out["ledger_bytes"] = self.ledger["total_bytes"] if self.ledger else None
        return out


class Worker:
    """The long-lived parts: Postgres pool, Redis client, rate limiter and API client.

    Nothing connects until first use, so a cold start with Postgres or Redis down still
    answers (and says so) instead of failing at import. The Redis client is a plain or a
    cluster client, whichever the server turns out to be at first use (`coclib.redis_client`).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        policy: DrainPolicy | None = None,
        reread: Callable[[], Settings] | None = None,
        on_reread: Callable[[Settings], None] | None = None,
    ) -> None:
        """`reread` builds the settings again, reading the referenced secrets anew (None: none
        are referenced); `on_reread` learns new settings before anything uses them (the log
        redaction must know a new secret before it can appear in a line)."""
        self.settings = settings
        self._reread = reread
        self._on_reread = on_reread
        self.keys = QueueKeys(settings.queue.refresh_queue_key)
        self.limiter = RateLimiter(settings.api.coc_reqs_per_sec, share_every=QUEUE_SHARE_EVERY)
        self.policy = self._with_settings(policy or DrainPolicy(linger=settings.drain_linger_seconds))
        self._queue: RefreshQueue | None = None
        self._redis_lock = asyncio.Lock()
        self._db: Database | None = None
        self._api: CocApi | None = None
        self._api_lock = asyncio.Lock()

    def _with_settings(self, policy: DrainPolicy) -> DrainPolicy:
        # FRESHNESS=off turns the gate off whatever policy a caller passes.
        return policy if self.settings.freshness else replace(policy, freshness=False)

    async def db(self) -> Database:
        if self._db is None:
            self._db = await Database.open(self.settings.database.database_url)
        return self._db

    async def redis(self) -> AsyncRedis:
        """The Redis client, connected (and the server's kind detected) once."""
        return (await self.queue()).redis

    async def queue(self) -> RefreshQueue:
        """The worker's side of the refresh queue, on the Redis client."""
        async with self._redis_lock:
            if self._queue is None:
                self._queue = RefreshQueue(await async_client(self.settings.queue), self.keys)
            return self._queue

    async def api(self) -> CocApi:
        """The API client, logged in once and reused (coc.py keeps its keys)."""
        async with self._api_lock:
            if self._api is None:
                self.settings.api.require_credentials()
                s = self.settings.api
                self._api = await CocApi.connect(
                    base_url=s.coc_api_base_url,
                    limiter=self.limiter,
                    tokens=s.coc_api_tokens,
                    email=s.coc_email,
                    password=s.coc_password,
                    max_in_flight=self.policy.max_in_flight * 2,
                )
            return self._api

    async def drain(self, seconds: float, **options: Any) -> RunSummary:
        """`run(seconds, **options)`, and only its run summary (retention still follows the drain)."""
        return (await self.run(seconds, **options)).summary

    async def run(
        self,
        seconds: float,
        *,
        policy: DrainPolicy | None = None,
        scheduled: bool = False,
        on_progress=None,
    ) -> RunReport:
        """A drain that returns within `seconds` (a `scheduled` one takes over and hands over),
        then ledger retention (`LEDGER_RETENTION_DAYS`) and the ledger's size."""
        self.settings.api.require_credentials()
        if policy is not None:
            policy = self._with_settings(policy)
        deadline = time.monotonic() + seconds
        drain = await self._drain(on_progress)
        summary = await drain.run(deadline, policy=policy, scheduled=scheduled)
        secret_fault = summary.stopped is StopCode.CIRCUIT_OPEN and summary.cause in SECRET_FAULTS
        if secret_fault and await self.reread_secrets():
            log.warning(
                "run %s halted (%s); a secret it uses has changed since it was read: "
                "draining again with the new value",
                summary.run_id,
                summary.cause,
            )
            drain = await self._drain(on_progress)
            summary = await drain.run(deadline, policy=policy, scheduled=scheduled)
        days = self.settings.ledger_retention_days
        if summary.stopped is StopCode.LEASE_HELD:
            # Another run is draining and does the housekeeping; this one did nothing.
            return RunReport(summary, days)
        if summary.cause == Reason.DATABASE_UNAVAILABLE:
            # Postgres failed the run (down, or a table locked past the run's time): asking it
            # again now would only wait again. The next run does the housekeeping.
            log.warning("Postgres failed this run: no retention or ledger size after it")
            return RunReport(summary, days)
        db = drain.db.bounded(deadline)  # within the run's time, like everything before it
        dropped = None
        if days is not None:
            gone = await apply_retention(db, days)  # never raises: the next run tries again
            dropped = None if gone is None else [str(part["partition"]) for part in gone]
        # After retention, so the figure is what stays: the CloudWatch dashboard's ledger size.
        return RunReport(summary, days, dropped, await ledger_size(db))

    async def _drain(self, on_progress) -> Drain:
        return Drain(
            queue=await self.queue(),
            db=await self.db(),
            connect_api=self.api,
            limiter=self.limiter,
            policy=self.policy,
            on_progress=on_progress,
        )

    async def reread_secrets(self) -> bool:
        """Read the referenced secrets again. When one changed: take the new settings, drop the
        connections made with the old ones (they reconnect at first use) and return True."""
        if self._reread is None:
            return False
        try:
            fresh = await asyncio.to_thread(self._reread)
        except ConfigError as exc:  # names the variable, never a value
            log.warning("could not read the secrets again: %s", exc)
            return False
        if fresh == self.settings:
            log.info("secrets read again: unchanged")
            return False
        if self._on_reread is not None:
            self._on_reread(fresh)
        await self.close()
        self.settings = fresh
        return True

    async def health(
        self, *, rules: HealthRules | None = None, budget: float = PROBE_BUDGET_SECONDS
    ) -> HealthReport:
        """Health from the ledger and the queue; reads only, takes no lease, answers within `budget`."""
        return await check_health(db=self.db, redis=self.redis, keys=self.keys, rules=rules, budget=budget)

    def migrate(self) -> list[str]:
        return migrate(self.settings.database.database_url)

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None
        if self._db is not None:
            await self._db.close()
            self._db = None
        if self._queue is not None:
            await self._queue.redis.aclose()
            self._queue = None
