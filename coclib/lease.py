"""One drainer at a time: a Redis lease with an owner token.

`SET key token NX PX ttl` takes it; only the owner may renew or release it (checked
atomically in Lua); if the process dies the lease simply expires. One key per command, so a
cluster client routes each to the key's slot like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from coclib.redis_client import AsyncRedis

log = logging.getLogger(__name__)

# KEYS[1] lease; ARGV[1] owner token; ARGV[2] ttl in ms.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """A renewable, owner-checked lease on one Redis key."""

    def __init__(self, client: AsyncRedis, key: str, *, ttl_ms: int = 30_000) -> None:
        self.redis = client
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = secrets.token_hex(16)
        self._renewer: asyncio.Task[None] | None = None
        self.lost = asyncio.Event()

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; start renewing it. False if it is held."""
        taken = await self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms)
        if taken:
            self._renewer = asyncio.create_task(self._renew_forever(), name="lease-renewer")
        return bool(taken)

    async def _renew_forever(self) -> None:
        # Renew at a third of the TTL so one slow round trip cannot let it lapse.
        interval = self.ttl_ms / 3000
        while True:
            await asyncio.sleep(interval)
            try:
                renewed = await self.redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms)
            except Exception:  # a blip: the next attempt may work, and the TTL still holds
                log.warning("could not renew the drain lease", exc_info=True)
                continue
            if not renewed:
                log.error("the drain lease was lost (expired or taken over)")
                self.lost.set()
                return

    async def release(self) -> None:
        """Stop renewing and give the lease back if we still own it."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        try:
            await self.redis.eval(_RELEASE, 1, self.key, self.token)
        except RedisError:
            log.warning("could not release the drain lease; it expires in %d ms", self.ttl_ms, exc_info=True)
