"""The refresh queue, both sides.

Producers call `enqueue()` (RPUSH; FIFO). The worker takes items with LMOVE into an
in-flight list, acknowledges them after the ledger commit, and puts unfinished ones
back at the head in their original order. An item in the in-flight list therefore
always belongs to a running drain or to one that died: nothing taken is ever lost.

De-duplication: `enqueue()` sets a marker key per kind and tag (SET NX with a TTL)
and pushes only when it was not already set, so a request for a kind and tag that is
already waiting is not queued twice. The worker deletes the markers of what it takes,
so a request made while an older one is being fetched is queued again (the fetch in
flight may predate whatever the caller wants to see). The TTL bounds the damage of
a marker whose item vanished (say, a flushed queue): at worst that kind and tag
cannot be enqueued for `dedupe_ttl` seconds.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import orjson
import redis
import redis.asyncio as aioredis

from coclib.errors import InvalidRequestError, RequestError
from coclib.keys import QueueKeys
from coclib.storable import excerpt
from coclib.tags import parse_tag

KINDS = ("player", "clan", "war")
MAX_ITEM_BYTES = 4096
MAX_ID_CHARS = 128
DEDUPE_TTL_SECONDS = 3600
# An id is printable text: no control characters (NUL among them) and no lone surrogates.
_ID = re.compile(rf"[^\x00-\x1f\x7f\ud800-\udfff]{{1,{MAX_ID_CHARS}}}")

# KEYS[1] queue, KEYS[2] the pending marker; ARGV[1] item, ARGV[2] marker TTL in seconds.
_ENQUEUE = """
if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
    redis.call('RPUSH', KEYS[1], ARGV[1])
    return 1
end
return 0
"""


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
    unfinished items back in their original order.
    """

    raw: bytes
    seq: int
    request_id: str
    request: RefreshRequest | None = None
    error: RequestError | None = None


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


def parse_item(raw: bytes, seq: int = 0) -> Taken:
    """Decode one queue item; a malformed one becomes a `Taken` with its `error` set."""
    request_id = request_id_for(raw)
    try:
        request = _parse(raw)
    except RequestError as exc:
        exc.detail = f"{exc.detail}; payload: {excerpt(raw)}"
        found_id = _id_if_any(raw)
        return Taken(raw, seq, found_id or request_id, error=exc)
    if not request.id:
        request = RefreshRequest(request_id, request.kind, request.tag, request.enqueued_at)
    return Taken(raw, seq, request.id, request=request)


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
    client: redis.Redis,
    kind: str,
    tag: str,
    *,
    keys: QueueKeys,
    dedupe_ttl: int = DEDUPE_TTL_SECONDS,
) -> str | None:
    """Queue a refresh of `kind` and `tag`; return its id, or None if one is already waiting.

    Raises `InvalidRequestError` or `InvalidTagError` for a bad kind or tag, so a producer
    learns at once instead of through a `failed` ledger row.
    """
    if kind not in KINDS:
        raise InvalidRequestError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    request = RefreshRequest(uuid.uuid4().hex, kind, parse_tag(tag), time.time())
    pushed = client.eval(
        _ENQUEUE, 2, keys.queue, keys.pending(kind, request.tag), encode(request), dedupe_ttl
    )
    return request.id if pushed else None


# -- consumer side -----------------------------------------------------------------


class RefreshQueue:
    """The worker's side of the queue: take, acknowledge, put back."""

    def __init__(self, client: aioredis.Redis, keys: QueueKeys, *, dedupe_ttl: int = DEDUPE_TTL_SECONDS):
        self.redis = client
        self.keys = keys
        self.dedupe_ttl = dedupe_ttl
        self._seq = 0

    async def take(self, n: int) -> list[Taken]:
        """Move up to `n` items from the head of the queue to the in-flight list."""
        if n <= 0:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for _ in range(n):
                pipe.lmove(self.keys.queue, self.keys.inflight, "LEFT", "RIGHT")
            raws = [raw for raw in await pipe.execute() if raw is not None]
        taken = []
        for raw in raws:
            taken.append(parse_item(raw, self._seq))
            self._seq += 1
        markers = [self.keys.pending(t.request.kind, t.request.tag) for t in taken if t.request]
        if markers:
            await self.redis.delete(*markers)
        return taken

    async def ack(self, items: Iterable[Taken]) -> None:
        """Forget items whose outcome is committed to the ledger."""
        items = list(items)
        if not items:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for item in items:
                pipe.lrem(self.keys.inflight, 1, item.raw)
            await pipe.execute()

    async def put_back(self, items: Sequence[Taken]) -> None:
        """Return unfinished items to the head of the queue, in take order, atomically."""
        if not items:
            return
        ordered = sorted(items, key=lambda t: t.seq)
        async with self.redis.pipeline(transaction=True) as pipe:
            # LPUSH puts its last argument first: push in reverse to keep the order.
            pipe.lpush(self.keys.queue, *[t.raw for t in reversed(ordered)])
            for item in ordered:
                pipe.lrem(self.keys.inflight, 1, item.raw)
                if item.request:
                    marker = self.keys.pending(item.request.kind, item.request.tag)
                    pipe.set(marker, b"1", nx=True, ex=self.dedupe_ttl)
            await pipe.execute()

    async def dead_letter(self, items: Sequence[Taken]) -> None:
        """Move items from the in-flight list to the dead-letter list, atomically."""
        if not items:
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(self.keys.dead_letter, *[t.raw for t in items])
            for item in items:
                pipe.lrem(self.keys.inflight, 1, item.raw)
            await pipe.execute()

    async def inflight(self) -> list[Taken]:
        """Everything in the in-flight list, parsed (for crash recovery)."""
        raws = await self.redis.lrange(self.keys.inflight, 0, -1)
        taken = []
        for raw in raws:
            taken.append(parse_item(raw, self._seq))
            self._seq += 1
        return taken

    async def sizes(self) -> tuple[int, int]:
        """(queue length, in-flight length)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(self.keys.queue)
            pipe.llen(self.keys.inflight)
            queued, inflight = await pipe.execute()
        return queued, inflight
