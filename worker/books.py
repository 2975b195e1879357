"""A run's books: where each taken item is, what is written for it, and where it goes after.

The drain decides what happens to a request (its call answered, the run stopped); the books
turn that into rows and Redis moves. An item's terminal row (and snapshot) waits in the next
batch (`record`); `flush` writes the batch in one transaction, narrows down whatever Postgres
refuses to the request that caused it, and `release`s each recorded item: a settled request is
acknowledged (gone from the in-flight list), one closed for this run goes back to the head of
the queue, one whose `failed` row even is refused goes to the dead-letter list. Whatever Redis
fails to do, or the fence refuses once the run's lease is lost (`coclib.queue.LeaseLost`), is
left in the in-flight list for the next run's recovery. The tracker
(`worker.tracker`) holds every item's stage; the summary's counts are of committed rows.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from redis.exceptions import RedisError

from coclib.queue import LeaseLost, RefreshQueue
from coclib.reasons import Reason
from ledger.outcomes import LedgerRow, Outcome
from ledger.writer import Entry, LedgerWriter, SummaryOrMaker, Written, row_dict
from worker.stopping import Stopping
from worker.tracker import FINAL, AccountingError, Item, Stage, Tracker

log = logging.getLogger(__name__)


class Books:
    """One run's items, the rows written for them, and the summary's counts of those rows."""

    def __init__(
        self,
        queue: RefreshQueue,
        writer: LedgerWriter,
        stopping: Stopping,
        *,
        run_id: str,
        counts: dict[str, int],
        on_progress: Callable[[Counter[str]], None] | None = None,
        changes: dict[str, dict[str, int]] | None = None,
    ) -> None:
        self.queue = queue
        self.writer = writer
        self.stopping = stopping  # a Postgres fault stops the run
        self.run_id = run_id
        self.counts = counts  # the run summary's: committed rows per outcome
        self.changes = {} if changes is None else changes  # per kind: fetched, and changed of those
        self.items = Tracker()
        self._on_progress = on_progress

    @staticmethod
    def row(
        item: Item,
        outcome: Outcome,
        reason: Reason | None = None,
        detail: str | None = None,
        *,
        http_status: int | None = None,
        latency_ms: int | None = None,
    ) -> LedgerRow:
        taken = item.taken
        request = taken.request
        kind, tag = (request.kind, request.tag) if request else (None, None)
        return LedgerRow(taken.request_id, outcome, kind, tag, reason, detail, http_status, latency_ms)

    def record(self, item: Item, row: LedgerRow, snapshot=None) -> None:
        """Queue an item's terminal row (and snapshot) for the next batch."""
        item.entry = Entry((row,), snapshot, owner=item)
        self.items.move(item, Stage.RECORDING)

    async def flush(self, *, run_summary: SummaryOrMaker | None = None) -> Written | None:
        """Write every RECORDING item's batch entry; acknowledge, put back or dead-letter each."""
        batch = self.items.in_stage(Stage.RECORDING)
        if not batch and run_summary is None:
            return None
        written = await self.writer.write([item.entry for item in batch], run_summary=run_summary)
        self.count(written.committed)
        done = [e.owner for e in written.committed]
        dead: list[Item] = []
        if written.refused:
            done += await self._record_unstorable(written, dead)
        if written.unavailable is not None:
            for entry in written.unwritten:
                # A settling row may have committed (the connection can die after COMMIT
                # reached the server): leave the item for recovery, which reads the ledger.
                # A closing row changes nothing if lost: the item goes back as it is.
                settles = entry.rows[-1].outcome.settles
                self.items.move(entry.owner, Stage.LEFT if settles else Stage.UNRECORDED)
            self.stopping.database_fault(written.unavailable)
        await self.release(done, dead)
        return written

    async def _record_unstorable(self, written: Written, dead: list[Item]) -> list[Item]:
        """Fail each request whose data Postgres refused, on a row of its own; dead-letter any
        whose `failed` row is refused too. Returns the items now recorded."""
        unstorable = []
        for entry, why in written.refused:
            item: Item = entry.owner
            log.warning("Postgres refused the data of %s: %s", item.taken.request_id, why)
            what = entry.rows[-1].outcome
            detail = f"Postgres refused its {what} row{' and snapshot' if entry.snapshot else ''}: {why}"
            item.entry = Entry((self.row(item, Outcome.FAILED, Reason.UNSTORABLE, detail),), owner=item)
            unstorable.append(item.entry)
        second = await self.writer.write(unstorable)
        self.count(second.committed)
        for entry, why in second.refused:
            dead.append(entry.owner)
            log.error(
                "Postgres refused even a `failed` row for %s (%s); moving it to the dead-letter list %s",
                entry.owner.taken.request_id,
                why,
                self.queue.keys.dead_letter,
                extra={"payload": entry.owner.taken.raw[:200].decode("utf-8", "backslashreplace")},
            )
        if second.unavailable is not None:
            written.unavailable = written.unavailable or second.unavailable
            self.items.move_all([e.owner for e in second.unwritten], Stage.LEFT)
        return [e.owner for e in second.committed]

    async def release(self, recorded: list[Item], dead: list[Item]) -> None:
        """Take recorded items off the in-flight list: settled ones for good, the rest back to the
        head of the queue; dead letters aside. Whatever Redis fails to do (or the fence refuses)
        is left for recovery, and the error raised."""
        settled = [i for i in recorded if i.entry.rows[-1].outcome.settles]
        closed = [i for i in recorded if not i.entry.rows[-1].outcome.settles]
        moves = [
            (settled, self.queue.ack, Stage.ACKED),
            (closed, self.queue.put_back, Stage.RETURNED),
            (dead, self.queue.dead_letter, Stage.DEAD_LETTERED),
        ]
        for n, (items, act, stage) in enumerate(moves):
            if not items:
                continue
            try:
                await act([i.taken for i in items])
            except RedisError:
                # Nothing after this one is tried either: all of it stays in flight, recorded.
                for rest, _, _ in moves[n:]:
                    self.items.move_all(rest, Stage.LEFT)
                raise
            self.items.move_all(items, stage)

    def count(self, entries: list[Entry]) -> None:
        counts = self.counts
        for entry in entries:
            for row in entry.rows:
                counts[row.outcome] = counts.get(row.outcome, 0) + 1
                if row.changed is not None and row.kind is not None:
                    change = self.changes.setdefault(row.kind, {"fetched": 0, "changed": 0})
                    change["fetched"] += 1
                    change["changed"] += row.changed
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("outcome", extra={"ledger": row_dict(row), "run_id": self.run_id})
        if entries and self._on_progress is not None:
            self._on_progress(Counter(counts))

    async def put_back_unrecorded(self, *, checks: bool) -> None:
        """Return what could not be recorded to the queue; anything else unfinished stays in flight.

        A fault of the run's (Postgres or Redis lost, a bug, a cancellation) can strand items;
        with `checks` on, stranded items no fault explains are a bug, and raise.
        """
        unrecorded = self.items.in_stage(Stage.UNRECORDED)
        try:
            await self.queue.put_back([i.taken for i in unrecorded])
        except RedisError as exc:
            log.warning("could not put %d items back; they stay in flight for recovery", len(unrecorded))
            self.items.move_all(unrecorded, Stage.LEFT)
            if isinstance(exc, LeaseLost):
                self.stopping.redis_fault(exc)  # the run's stop says why: `lease_lost`
        else:
            self.items.move_all(unrecorded, Stage.RETURNED)
        stranded = [item for item in self.items if item.stage not in FINAL]
        if stranded:
            log.warning("%d items could not be recorded; they stay in flight for recovery", len(stranded))
            self.items.move_all(stranded, Stage.LEFT)
            if checks and not self.stopping.explains_stranded_items:
                # No fault explains it: the drain lost track of these (a bug, loud in tests).
                raise AccountingError(f"stranded by a run: {[i.taken.request_id for i in stranded]}")
