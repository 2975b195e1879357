"""The completion signal: `NOTIFY refresh_done` when requests settle, and a way to wait for them.

The worker sends, inside the very transaction that stores requests' settling ledger rows (and
their snapshots), notifications on channel `refresh_done` whose payload is a JSON array:

    [{"id": "9f1c…", "kind": "player", "tag": "#2PP", "outcome": "fetched"}, …]

Postgres delivers a transaction's notifications when it commits, in the order they were sent,
and never those of a transaction that rolls back. So a listener never hears of a row it cannot
read yet, nor of a batch that did not land (the ledger writer splits a batch Postgres refuses;
only the parts that commit are heard). A payload must be shorter than 8,000 bytes
(`MAX_PAYLOAD_BYTES`); a commit that settles more than fits is told over several
notifications (about 90 requests each), in order.

`RefreshWaiter` is the site's side, for one process that waits for its own requests:

    with RefreshWaiter.connect(database_url) as waiter:        # LISTEN starts here
        request_id = enqueue(redis, "player", "#2PP", keys=keys)
        result = waiter.wait(ids=[request_id], timeout=10)
    result.settled  # [Settled(id=…, kind='player', tag='#2PP', outcome='fetched')]

Listen first, then enqueue: Postgres does not keep notifications for sessions that were not
listening when they were sent. Waiting by id also reads the ledger once, so an id that settled
before `wait` is found; waiting by tag hears only settlements after the waiter started.

`LISTEN` belongs to a session: the connection must be a direct one (or go through a pooler in
session mode). Behind a transaction-pooling proxy (PgBouncer `pool_mode = transaction` or
`statement`) the LISTEN lands on one server connection and the waiter's next read on another,
and nothing is ever heard.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from psycopg.rows import tuple_row

from coclib.sqlfiles import load_queries

CHANNEL = "refresh_done"
# Postgres refuses a payload of 8000 bytes or more (NOTIFY_PAYLOAD_MAX_LENGTH, with the
# default 8 kB block size): 7999 is the most it takes.
MAX_PAYLOAD_BYTES = 7999
# The outcomes that settle a request, as the contract names them: what the worker notifies
# and what `RefreshWaiter` looks for in the ledger: the one home of this set, which the
# worker's `ledger.outcomes.SETTLING` is built from (coclib cannot import ledger: producers
# use coclib alone).
SETTLED_OUTCOMES = ("fetched", "failed", "skipped-fresh")
# Settlements heard that no wait wanted yet, kept for the next `wait` (a site waiting for
# one request, then another, must not miss the second for having heard it early).
_HEARD_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class Settled:
    """One settled request, as a notification tells it. `kind` and `tag` are None for a
    malformed item (it is `failed` with no valid kind or tag)."""

    id: str
    kind: str | None
    tag: str | None
    outcome: str


def _element(settled: Settled) -> bytes:
    return orjson.dumps(
        {"id": settled.id, "kind": settled.kind, "tag": settled.tag, "outcome": settled.outcome}
    )


def payloads(settled: Iterable[Settled], max_bytes: int = MAX_PAYLOAD_BYTES) -> list[str]:
    """The notification payloads for `settled`, in order, each at most `max_bytes` of UTF-8.

    Greedy: a payload takes requests until the next would not fit. Raises `ValueError` for a
    request that alone would not fit, which a ledger row cannot be (an id is at most 128
    characters, so an element is at most about 600 bytes).
    """
    out: list[str] = []
    current: list[bytes] = []
    size = 2  # the brackets
    for one in settled:
        element = _element(one)
        if len(element) + 2 > max_bytes:
            raise ValueError(f"request {one.id!r} alone makes a payload over {max_bytes} bytes")
        if current and size + 1 + len(element) > max_bytes:
            out.append(b"[" + b",".join(current) + b"]")
            current, size = [], 2
        size += len(element) + (1 if current else 0)
        current.append(element)
    if current:
        out.append(b"[" + b",".join(current) + b"]")
    return [payload.decode() for payload in out]


def parse_payload(payload: str) -> list[Settled]:
    """The requests one `refresh_done` payload tells of."""
    return [Settled(e["id"], e.get("kind"), e.get("tag"), e["outcome"]) for e in orjson.loads(payload)]


@dataclass
class Waited:
    """What `RefreshWaiter.wait` heard: the first settlement of each thing waited for, in the
    order heard, and what it did not hear before the timeout."""

    settled: list[Settled] = field(default_factory=list)
    missing_ids: list[str] = field(default_factory=list)
    missing_tags: list[tuple[str | None, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing_ids and not self.missing_tags


class RefreshWaiter:
    """Listens on `refresh_done` from the moment it is made; `wait()` returns when the requests
    (by id) or tags (by kind and tag; kind None: any kind) it is given are settled.

    It owns its connection (autocommit, for LISTEN to take effect at once), and is meant for
    one thread. Notifications for requests nobody waits for are dropped.
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        if not conn.autocommit:
            raise ValueError("RefreshWaiter needs an autocommit connection (LISTEN takes effect on commit)")
        self.conn = conn
        self._heard: deque[Settled] = deque(maxlen=_HEARD_KEPT)
        conn.execute(f"LISTEN {CHANNEL}")

    @classmethod
    def connect(cls, conninfo: str, **kwargs: Any) -> RefreshWaiter:
        """A waiter on a new connection to `conninfo` (a direct one: see the module's note)."""
        return cls(psycopg.connect(conninfo, autocommit=True, **kwargs))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> RefreshWaiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait(
        self,
        ids: Sequence[str] = (),
        tags: Sequence[tuple[str | None, str]] = (),
        *,
        timeout: float | None = None,
    ) -> Waited:
        """Block until every id and every (kind, tag) has settled, or `timeout` seconds pass.

        Tags must be normalised as the queue stores them (`coclib.tags.parse_tag`).
        """
        want_ids = dict.fromkeys(ids)
        want_tags = dict.fromkeys(tags)
        result = Waited()

        def take(one: Settled) -> None:
            matched = False
            if one.id in want_ids:
                del want_ids[one.id]
                matched = True
            for wanted in [w for w in want_tags if w[1] == one.tag and w[0] in (None, one.kind)]:
                del want_tags[wanted]
                matched = True
            if matched:
                result.settled.append(one)
            else:
                self._heard.append(one)

        # Heard during an earlier wait and not wanted then: still news for this one.
        earlier, self._heard = list(self._heard), deque(maxlen=_HEARD_KEPT)
        for one in earlier:
            take(one)
        if want_ids:
            with self.conn.cursor(row_factory=tuple_row) as cur:
                cur.execute(
                    load_queries()["settled_by_id"],
                    {"ids": list(want_ids), "settling": list(SETTLED_OUTCOMES)},
                )
                for request_id, kind, tag, outcome in cur.fetchall():
                    take(Settled(request_id, kind, tag, outcome))

        deadline = None if timeout is None else time.monotonic() + timeout
        while want_ids or want_tags:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            # stop_after=1 and no break: the generator ends by itself after the packet it read,
            # so no notification of that packet is dropped.
            for note in self.conn.notifies(timeout=remaining, stop_after=1):
                if note.channel == CHANNEL:
                    for one in parse_payload(note.payload):
                        take(one)
        result.missing_ids = list(want_ids)
        result.missing_tags = list(want_tags)
        return result
