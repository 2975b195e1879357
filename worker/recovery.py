"""Crash recovery: settle or requeue what a dead run left in the in-flight list.

Anything in the in-flight list when a run starts belongs to a run that died: the new run holds
the lease. A request with a settling row is done; a malformed one fails; one a run attempted
and abandoned `interrupted_limit` times is `failed`; the rest go back to the head of their lane,
in order. Rows Postgres refuses are narrowed down like any batch's (`worker.books`): a poisoned
in-flight list cannot stop a run. What the ledger remembers is read through `ledger.recovery`.
"""

from __future__ import annotations

import logging
from collections import Counter

import orjson

from coclib.db import Database
from coclib.errors import DatabaseUnavailable
from coclib.errortext import describe
from coclib.reasons import Reason
from ledger import recovery
from ledger.outcomes import Outcome
from worker.books import Books
from worker.tracker import Stage

log = logging.getLogger(__name__)


async def recover(books: Books, db: Database, *, interrupted_limit: int) -> dict[str, int] | None:
    """Recover the in-flight list; returns what became of its items (None: nothing to do, or
    Postgres went away and everything was left for the next run).

    First the summaries of runs that lost Postgres are recorded: they prove those runs lived,
    so what they left in flight is not counted as interrupted.
    """
    queue = books.queue
    try:
        await record_stashed_summaries(books)
    except DatabaseUnavailable as exc:
        books.stopping.database_fault(exc)
        return None
    found = await queue.inflight()
    if not found:
        return None
    items = [books.items.add(t, Stage.UNFINISHED) for t in found]
    ids = [t.request_id for t in found]
    try:
        done = await recovery.settled(db, ids)
        interrupted = await recovery.interruptions(db, ids)
    except DatabaseUnavailable as exc:
        books.items.move_all(items, Stage.LEFT)
        books.stopping.database_fault(exc)
        return None
    stats: Counter[str] = Counter()
    requeue = []
    for item in items:
        taken = item.taken
        if taken.request_id in done:
            # Settled for good: only its acknowledgement is left, and whatever happens to the
            # run from here on, it gets no other row and is never put back.
            books.items.move(item, Stage.SETTLED)
            stats["already_settled"] += 1
        elif taken.error is not None:
            books.record(item, books.row(item, Outcome.FAILED, taken.error.reason, taken.error.detail))
            stats["failed"] += 1
        elif interrupted.get(taken.request_id, 0) >= interrupted_limit:
            detail = f"interrupted in {interrupted[taken.request_id]} runs"
            books.record(item, books.row(item, Outcome.FAILED, Reason.INTERRUPTED, detail))
            stats["failed"] += 1
        else:
            requeue.append(item)
            stats["requeued"] += 1
    await books.flush()
    if books.stopping.database_lost:  # leave the rest for the next run
        books.items.move_all(books.items.in_stage(Stage.SETTLED) + requeue, Stage.LEFT)
        return None
    settled = books.items.in_stage(Stage.SETTLED)
    await queue.ack([i.taken for i in settled])  # a Redis fault leaves them SETTLED, then LEFT
    books.items.move_all(settled, Stage.ACKED)
    await queue.put_back([i.taken for i in requeue])
    books.items.move_all(requeue, Stage.RETURNED)
    log.warning("recovered %d in-flight items from a dead run: %s", len(items), dict(stats))
    return dict(stats)


async def record_stashed_summaries(books: Books) -> None:
    """Write the summaries runs stashed in Redis when they lost Postgres, then forget them."""
    stashed = await books.queue.stashed_summaries()
    if not stashed:
        return
    for raw in stashed:
        try:
            summary = orjson.loads(raw)
            summary["recorded_by"] = books.run_id  # late, by this run
            await books.writer.write_summary(summary)
        except (orjson.JSONDecodeError, TypeError, KeyError) as exc:  # not a summary of ours
            log.error("dropping a stashed run summary that cannot be read: %s", describe(exc))
    await books.queue.drop_stashed_summaries(len(stashed))
    log.warning("recorded %d run summaries stashed by runs that lost Postgres", len(stashed))
