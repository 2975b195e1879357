"""One drainer at a time, and the hand-over from one to the next.

The lease is one Redis key holding its owner's value, `"<run id> <mode>"`: `SET NX PX` takes
it; only the owner may renew, release or hand it over (checked atomically in Lua); it is
renewed every second and lapses `ttl` after its owner dies. The mode says whether the owner
`yields` to a successor (a scheduled drain) or `keeps` the lease to the end (POST /refresh,
an operator's drain).

Hand-over: a newer scheduled invocation that finds a yielding drain running gets ready, then
announces itself under the successor key (a short TTL that it refreshes while it waits, so a
successor that dies is forgotten within seconds; at most one waits). The owner's renewal
sees it within a second; its drain stops starting calls, settles what is in flight, puts back
what it prefetched, and `hand_over()` gives the lease to the successor in one step. If the
successor is gone by then, the lease is simply released.

The seam: whoever gives the lease up (handing it over or releasing it) leaves a note of when
its last API call started; whoever takes it next reads the note and starts its first call at
least one rate-limit spacing later, so that two drains in a row never exceed the limit
together as the API sees it.

The fence: renewing every second notices a lost lease within a second of running again, but a
drain that stalled past its TTL (a long pause, a partition) may act before it notices, on items
another drain has recovered and taken meanwhile. So the lease also fences the queue: a drain
changes the in-flight list only through `RefreshQueue.fenced(lease.value)`, whose scripts check
this key's value first and change nothing (`coclib.queue.LeaseLost`) once it is another's or gone.
A hand-over changes the value, so the handing-over run finishes before `give_up`.

Every key involved (lease, successor, seam note) is a `QueueKeys` key of the queue's slot, so
each script below runs on the node that owns it, on a single node and on a Redis Cluster alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from redis.exceptions import RedisError

from coclib.keys import QueueKeys

if TYPE_CHECKING:
    from coclib.redis_client import AsyncRedis

log = logging.getLogger(__name__)

YIELDS, KEEPS = "yields", "keeps"

# KEYS[1] lease; ARGV[1] our value, ARGV[2] ttl in ms. Takes the lease if nobody holds it. A key
# of another type would read as a lease held forever (SET NX never succeeds): it is an error that
# names it instead, which the drain reports as `redis_wrong_type`.
_ACQUIRE = """
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'string' and kind ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' holds a ' .. kind .. ', not the drain lease')
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
"""
# KEYS[1] lease, KEYS[2] successor; ARGV[1] our value, ARGV[2] ttl in ms.
# Returns false when the lease is no longer ours, else the waiting successor's value or ''.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return false
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('GET', KEYS[2]) or ''
"""
# KEYS[1] lease, KEYS[2] successor, KEYS[3] seam note; ARGV[1] our value, ARGV[2] the
# successor's value ('' to release), ARGV[3] the lease's ttl in ms, ARGV[4] the note, ARGV[5]
# the successor's ttl in ms. 1: handed over; -1: released (asked to, or the successor is
# gone); 0: the lease was not ours. A handed-over lease lives only as long as an announcement:
# a live successor renews it at once, a dead one lets it lapse within seconds.
_GIVE_UP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[3])
if ARGV[2] == '' or redis.call('GET', KEYS[2]) ~= ARGV[2] then
    redis.call('DEL', KEYS[1])
    return -1
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[5])
redis.call('DEL', KEYS[2])
return 1
"""
# KEYS[1] lease; ARGV[1] the successor's value. The lease's remaining ms if the successor holds
# it, -1 if nobody does, -2 if someone else does.
_HOLDING = """
local value = redis.call('GET', KEYS[1])
if not value then
    return -1
end
if value ~= ARGV[1] then
    return -2
end
return redis.call('PTTL', KEYS[1])
"""
# KEYS[1] successor; ARGV[1] our value, ARGV[2] ttl in ms: keep our announcement alive.
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS[1] successor; ARGV[1] our value: take our announcement back.
_UNANNOUNCE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
# KEYS[1] lease, KEYS[2] successor; ARGV[1] our value. Stop waiting: 1 if the lease came to us
# meanwhile (it is ours then), else withdraw the announcement and return 0.
_WITHDRAW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return 1
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
    redis.call('DEL', KEYS[2])
end
return 0
"""


@dataclass(frozen=True)
class Seam:
    """The note the previous holder left: which run it was, when its last API call started."""

    from_run: str
    last_start: float | None  # unix time; None: it made no call


class Lease:
    """The drain lease of one queue, held by one run."""

    def __init__(
        self,
        client: AsyncRedis,
        keys: QueueKeys,
        *,
        owner: str,
        yields: bool,
        ttl: float = 10.0,
        renew_every: float = 1.0,
        successor_ttl: float = 3.0,
    ) -> None:
        self.redis = client
        self.keys = keys
        # What the lease key holds while this run owns it: its fencing token too (`RefreshQueue.fenced`).
        self.value = f"{owner} {YIELDS if yields else KEEPS}"
        self.ttl_ms = round(ttl * 1000)
        self.renew_every = renew_every
        self.successor_ttl_ms = round(successor_ttl * 1000)
        self.lost = asyncio.Event()
        self.successor_waiting = asyncio.Event()
        self.successor: str | None = None  # the waiting successor's lease value
        self.took_over = False  # the lease was handed to us by a running drain
        self._renewer: asyncio.Task[None] | None = None
        self._renewing = False

    @property
    def owner(self) -> str:
        return self.value.split(" ", 1)[0]

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; start renewing it. False if it is held."""
        taken = await self.redis.eval(_ACQUIRE, 1, self.keys.lease, self.value, self.ttl_ms)
        if taken:
            self._start_renewing()
        return bool(taken)

    async def holder_yields(self) -> bool | None:
        """Whether the current holder yields to a successor; None if nobody holds the lease."""
        value = await self.redis.get(self.keys.lease)
        if value is None:
            return None
        return value.decode(errors="replace").endswith(f" {YIELDS}")

    async def successor_waits(self) -> bool:
        """Whether another run already waits to take over."""
        return bool(await self.redis.exists(self.keys.successor))

    async def take_over(self, *, wait: float, poll: float = 0.05) -> bool:
        """Wait, as the successor, for the running drain to hand over (or finish), at most `wait` s.

        Announces this run under the successor key first; returns False at once if another
        successor is already waiting, or after `wait` seconds without the lease.
        """
        announced = await self.redis.set(self.keys.successor, self.value, nx=True, px=self.successor_ttl_ms)
        if not announced:
            return False
        keys = (self.keys.lease, self.keys.successor)
        deadline = time.monotonic() + wait
        refresh_at = time.monotonic() + self.successor_ttl_ms / 3000
        try:
            while time.monotonic() < deadline:
                value = await self.redis.get(self.keys.lease)
                if value is not None and value.decode(errors="replace") == self.value:
                    return await self._took_over()
                free = value is None
                if free and await self.redis.set(self.keys.lease, self.value, nx=True, px=self.ttl_ms):
                    # The running drain ended on its own: the lease was free to take.
                    await self.redis.eval(_UNANNOUNCE, 1, self.keys.successor, self.value)
                    self._start_renewing()
                    return True
                if time.monotonic() >= refresh_at:
                    await self.redis.eval(_REFRESH, 1, self.keys.successor, self.value, self.successor_ttl_ms)
                    refresh_at = time.monotonic() + self.successor_ttl_ms / 3000
                await asyncio.sleep(poll)
        except BaseException:
            with contextlib.suppress(RedisError):
                await self.redis.eval(_WITHDRAW, 2, *keys, self.value)
            raise
        if await self.redis.eval(_WITHDRAW, 2, *keys, self.value):
            return await self._took_over()  # it came just as we gave up
        return False

    async def _took_over(self) -> bool:
        # Renewed at once: that is how the previous holder learns this run is alive.
        await self.redis.eval(_RENEW, 2, self.keys.lease, self.keys.successor, self.value, self.ttl_ms)
        self.took_over = True
        self._start_renewing()
        return True

    async def seam(self) -> Seam | None:
        """The note the previous holder left, if it is recent (it lives as long as a lease)."""
        note = await self.redis.get(self.keys.seam)
        try:
            data = orjson.loads(note) if note else None
        except orjson.JSONDecodeError:
            return None
        if not isinstance(data, dict):
            return None
        last_start = data.get("last_start")
        return Seam(
            from_run=str(data.get("from_run", "")),
            last_start=float(last_start) if isinstance(last_start, int | float) else None,
        )

    def _start_renewing(self) -> None:
        self._renewing = True
        self._renewer = asyncio.create_task(self._renew_forever(), name="lease-renewer")

    async def _renew_forever(self) -> None:
        # Renewed every second, with a TTL of several: one slow round trip cannot let it lapse,
        # and a successor is noticed within a second.
        keys = (self.keys.lease, self.keys.successor)
        # The flag, not only the cancellation, ends the loop: a Redis client may turn a
        # cancellation that lands mid-command into an error of its own (seen with redis-py
        # under load), and a loop that took it for a blip would renew, and be awaited, forever.
        while self._renewing:
            await asyncio.sleep(self.renew_every)
            try:
                found = await self.redis.eval(_RENEW, 2, *keys, self.value, self.ttl_ms)
            except Exception:  # a blip: the next attempt may work, and the TTL still holds
                if self._renewing:
                    log.warning("could not renew the drain lease", exc_info=True)
                continue
            if found is None:
                log.error("the drain lease was lost (it expired, or another drain took it)")
                self.lost.set()
                return
            if found:
                self.successor = found.decode(errors="replace")
                self.successor_waiting.set()

    async def _stop_renewing(self) -> None:
        self._renewing = False
        renewer, self._renewer = self._renewer, None
        if renewer is None:
            return
        renewer.cancel()
        # Waited for, not awaited: its cancellation is its own end, while a cancellation of
        # this task (and only that) still comes through.
        await asyncio.wait({renewer})

    async def give_up(self, *, last_start: float | None, to_successor: bool = False) -> bool:
        """Hand the lease to the waiting successor (`to_successor`), else release it; leave the
        seam note either way. True once a live successor holds it. Never raises for Redis: a
        lease that cannot be given up expires on its own."""
        await self._stop_renewing()
        successor = (self.successor or "") if to_successor else ""
        note = orjson.dumps({"from_run": self.owner, "last_start": last_start})
        keys = (self.keys.lease, self.keys.successor, self.keys.seam)
        try:
            result = await self.redis.eval(
                _GIVE_UP, 3, *keys, self.value, successor, self.ttl_ms, note, self.successor_ttl_ms
            )
            if result == 1:
                return await self._successor_alive(successor)
        except RedisError:
            log.warning("could not give the drain lease up; it expires in %d ms", self.ttl_ms, exc_info=True)
            return False
        if to_successor:
            log.warning("the successor was gone at the hand-over: the lease is released instead")
        return False

    async def _successor_alive(self, successor: str, poll: float = 0.05) -> bool:
        """Wait until the successor renews the lease it was handed (it is alive) or lets it lapse."""
        while True:
            remaining = await self.redis.eval(_HOLDING, 1, self.keys.lease, successor)
            if remaining > self.successor_ttl_ms:
                return True  # renewed: the successor runs
            if remaining < 0:
                # Lapsed (the successor died) or already given up again (a successor with nothing
                # to do): either way the lease is free or not ours to worry about.
                if remaining == -1:
                    log.warning("the successor never renewed the lease it was handed")
                return remaining == -2
            await asyncio.sleep(poll)
