"""Redrive: re-queue failed requests, and the dead-letter list, when an operator says so.

The worker never requeues a `failed` request by itself: a 404 stays a 404. But some failures
are worth another try once their cause is gone (an API outage that outlasted the retries:
`upstream_error`, `timeout`; a bug since fixed: `unexpected_error`, `unstorable`), and the
dead-letter list holds items Postgres would not take even a `failed` row for. The anchors are
Sidekiq's "Retry All" on its retry set and SQS's dead-letter-queue redrive: select, look,
then move them back to the source queue in one action that leaves a record.

* Selection (`Selection`): failed requests from the ledger, the newest failure of each kind
  and tag in a time window, by reason and kind; and/or every item of the dead-letter list.
  A failure already redriven, or whose tag has settled otherwise since (its data is newer
  than the failure), is left out; a malformed request (no kind or tag) cannot be queued.
* `plan` shows what a redrive would do and changes nothing (the command's default).
* `apply` does it: under an advisory lock (two operators cannot redrive the same failure
  twice), each failure is enqueued as a new request (`coclib.queue.enqueue`: a new id, and
  the queue's de-duplication, so a kind and tag already waiting is not queued again), each
  dead letter moves to the tail of the queue as it is; one row per request goes to
  `refresh_redrives` in the same transaction (`sql/audit/redrives.sql` reads them).

The ledger keeps its outcomes: the failed request stays failed, the re-queued one writes rows
of its own under its new id, and `refresh_redrives` links the two. Redis and Postgres share no
transaction: should the record's commit fail after the pushes, the command says so and prints
what it queued.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from coclib.keys import QueueKeys
from coclib.queue import Taken, dead_letters, enqueue, requeue_dead_letters
from coclib.redis_client import SyncRedis
from coclib.sqlfiles import load_queries
from coclib.storable import excerpt
from ledger.outcomes import SETTLING

SOURCES = ("failed", "dead_letter")
QUEUED, ALREADY_QUEUED, GONE = "queued", "already_queued", "gone"
_CHUNK = 500  # dead letters moved per Redis script call: keeps each call short
_LOCK = "refresh_redrive"


@dataclass(frozen=True)
class Selection:
    """What to redrive. `reasons` / `kinds` None: any."""

    since: datetime
    until: datetime
    reasons: tuple[str, ...] | None = None
    kinds: tuple[str, ...] | None = None
    sources: tuple[str, ...] = ("failed",)

    def as_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "reasons": None if self.reasons is None else list(self.reasons),
            "kinds": None if self.kinds is None else list(self.kinds),
            "sources": list(self.sources),
        }


@dataclass
class Candidate:
    """One request a redrive would act on, and (after `apply`) what it did."""

    source: str
    request_id: str
    kind: str | None
    tag: str | None
    reason: str | None = None
    failed_at: datetime | None = None
    payload: str | None = None  # a dead letter's start
    taken: Taken | None = field(default=None, repr=False)  # a dead letter as read
    result: str | None = None
    new_request_id: str | None = None

    def as_row(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "tag": self.tag,
            "request_id": self.request_id,
            "reason": self.reason,
            "failed_at": self.failed_at,
            "result": self.result,
            "new_request_id": self.new_request_id,
        }


def plan(
    conn: psycopg.Connection[Any], client: SyncRedis, keys: QueueKeys, selection: Selection
) -> list[Candidate]:
    """What a redrive of `selection` would act on, failures first, each oldest first."""
    found: list[Candidate] = []
    if "failed" in selection.sources:
        params = {
            "since": selection.since,
            "until": selection.until,
            "reasons": None if selection.reasons is None else list(selection.reasons),
            "kinds": None if selection.kinds is None else list(selection.kinds),
            "settling": [str(o) for o in SETTLING],
        }
        with conn.cursor(row_factory=dict_row) as cur:
            for row in cur.execute(load_queries()["redrivable_failures"], params).fetchall():
                found.append(Candidate("failed", **row))
    if "dead_letter" in selection.sources:
        for item in dead_letters(client, keys=keys):
            request = item.request
            found.append(
                Candidate(
                    "dead_letter",
                    item.request_id,
                    request.kind if request else None,
                    request.tag if request else None,
                    payload=excerpt(item.raw),
                    taken=item,
                )
            )
    return found


def apply(
    conn: psycopg.Connection[Any], client: SyncRedis, keys: QueueKeys, selection: Selection
) -> tuple[uuid.UUID, list[Candidate]]:
    """Redrive `selection` and record it; returns the redrive's id and what it did to each.

    `conn` must be in autocommit mode (the transaction is this function's). Raises what Redis
    or Postgres raise; what was queued before a Redis error is still recorded.
    """
    redrive_id = uuid.uuid4()
    failure: Exception | None = None
    with conn.transaction():
        # Held to the commit: a second redrive waits, then sees this one's record.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (_LOCK,))
        candidates = plan(conn, client, keys, selection)
        try:
            _queue(client, keys, candidates)
        except Exception as exc:  # Redis failed part-way: record what was queued, then raise
            failure = exc
        done = [c for c in candidates if c.result in (QUEUED, ALREADY_QUEUED)]
        if done:
            conn.execute(load_queries()["insert_redrives"], _record_params(redrive_id, selection, done))
    if failure is not None:
        raise failure
    return redrive_id, candidates


def _queue(client: SyncRedis, keys: QueueKeys, candidates: list[Candidate]) -> None:
    for candidate in candidates:
        if candidate.source == "failed":
            assert candidate.kind is not None and candidate.tag is not None  # the query's filter
            new_id = enqueue(client, candidate.kind, candidate.tag, keys=keys)
            candidate.result = QUEUED if new_id else ALREADY_QUEUED
            candidate.new_request_id = new_id
    dead = [c for c in candidates if c.source == "dead_letter"]
    for start in range(0, len(dead), _CHUNK):
        chunk = dead[start : start + _CHUNK]
        results = requeue_dead_letters(client, [c.taken for c in chunk if c.taken], keys=keys)
        for candidate, result in zip(chunk, results, strict=True):
            candidate.result = {1: QUEUED, 0: ALREADY_QUEUED}.get(result, GONE)
            candidate.new_request_id = candidate.request_id if result == 1 else None


def _record_params(redrive_id: uuid.UUID, selection: Selection, done: list[Candidate]) -> dict[str, Any]:
    columns = (
        "source",
        "request_id",
        "kind",
        "tag",
        "reason",
        "failed_at",
        "result",
        "new_request_id",
        "payload",
    )
    params: dict[str, Any] = {name: [getattr(c, name) for c in done] for name in columns}
    params["redrive_id"] = redrive_id
    params["selection"] = Jsonb(selection.as_json())
    return params
