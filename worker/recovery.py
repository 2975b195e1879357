"""Crash recovery: settle or requeue what a dead run left in the in-flight list.

Anything in the in-flight list when a run starts belongs to a run that died: the new run holds
the lease. (Or to one that stalled past its lease and may yet wake up: the fence on the in-flight
list, `RefreshQueue.fenced`, keeps it from touching these items, or this run's copies of them.)
A request with a settling row is done; a malformed one fails; one a run attempted and abandoned
`interrupted_limit` times is `failed`; the rest go back to the head of their lane, in order.
Rows Postgres refuses are narrowed down like any batch's (`worker.books`): a poisoned in-flight
list cannot stop a run. What the ledger remembers is read through `ledger.recovery`.
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


async def recover(books: Books, db: Database, *, interrupted_limit: int, stats: dict[str, int]) -> None:
    """Recover the in-flight list, counting in `stats` (the run summary's `recovered`) what
    becomes of its items.

    First the summaries of runs that lost Postgres are recorded: they prove those runs lived,
    so what they left in flight is not counted as interrupted. A request to requeue was not
    attempted by this run: it goes back as it is (UNRECORDED), with no row, whatever happens to
    the run; a settled one only waits for its acknowledgement (SETTLED). What Redis or Postgres
    fails to do for either is done by the run's finish, or left in flight for the next run.
    """
    queue = books.queue
    try:
        await record_stashed_summaries(books)
    except DatabaseUnavailable as exc:
        books.stopping.database_fault(exc)
        return
    found = await queue.inflight()
    if not found:
        return
    items = [books.items.add(t, Stage.UNFINISHED) for t in found]
    ids = [t.request_id for t in found]
    try:
        done = await recovery.settled(db, ids)
        interrupted = await recovery.interruptions(db, ids)
    except DatabaseUnavailable as exc:
        books.items.move_all(items, Stage.LEFT)
        books.stopping.database_fault(exc)
        return
    counts: Counter[str] = Counter()
    for item in items:
        taken = item.taken
        if taken.request_id in done:
            books.items.move(item, Stage.SETTLED)
            counts["already_settled"] += 1
        elif taken.error is not None:
            books.record(item, books.row(item, Outcome.FAILED, taken.error.reason, taken.error.detail))
            counts["failed"] += 1
        elif interrupted.get(taken.request_id, 0) >= interrupted_limit:
            detail = f"interrupted in {interrupted[taken.request_id]} runs"
            books.record(item, books.row(item, Outcome.FAILED, Reason.INTERRUPTED, detail))
            counts["failed"] += 1
        else:
            books.items.move(item, Stage.UNRECORDED)
            counts["requeued"] += 1
    stats.update(counts)
    log.warning("recovering %d in-flight items from a dead run: %s", len(items), dict(counts))
    await books.flush()
    if books.stopping.database_lost:
        return  # the finish puts the requeued back and leaves the settled in flight
    settled = books.items.in_stage(Stage.SETTLED)
    await queue.ack([i.taken for i in settled])
    books.items.move_all(settled, Stage.ACKED)
    requeue = books.items.in_stage(Stage.UNRECORDED)
    await queue.put_back([i.taken for i in requeue])
    books.items.move_all(requeue, Stage.RETURNED)


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
