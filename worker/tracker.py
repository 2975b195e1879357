"""Where each item a run took is: exactly one named stage at any moment.

A run takes items off the queue (and, in crash recovery, finds them in the in-flight list);
from then until the run ends, every one of them is in one `Stage`, and only `Tracker.move`
changes that. `assert_accounted()` checks the books: every item taken is in exactly one
stage, and, once the run is over, in a final one. The drain calls it after every step when
its checks are on (the tests and the state machine turn them on).

Memory is bounded by the items in the run's hands, not by how many the run took: an item that
reaches a final stage is only counted there. The tracker lets go of it, and the item lets go of
its rows and snapshot (a 25 KB body, held until the batch that wrote it was acknowledged), so
a run that takes 9,000 requests holds what one that takes 100 does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice

from coclib.errors import TransientError
from coclib.queue import Taken
from coclib.reasons import Reason
from ledger.writer import Entry


class Stage(StrEnum):
    """Where a taken item is."""

    # In the run's hands.
    BUFFERED = "buffered"  # taken, its API call not started
    CALLING = "calling"  # its `attempted` row is written and its API call (`Item.call`) is running
    ANSWERED = "answered"  # its call finished; the result waits for the run to harvest it
    RETRYING = "retrying"  # met a transient error; starts again at `ready_at`
    PARKED = "parked"  # out of tries: `failed`, unless the API turns out to be down
    UNFINISHED = "unfinished"  # to be closed with the run's stop (deferred / skipped-deadline)
    RECORDING = "recording"  # its rows (and snapshot) wait in the next batch
    UNRECORDED = "unrecorded"  # goes back as it is, no row: Postgres went away first, or recovery requeues it
    SETTLED = "settled"  # found in flight with its settling row committed: only the ack is left
    # Done with, for this run.
    ACKED = "acked"  # settled, committed, and gone from the in-flight list
    RETURNED = "returned"  # back at the head of the queue
    LEFT = "left"  # left in the in-flight list for the next run's recovery
    DEAD_LETTERED = "dead_lettered"  # not even a `failed` row could be stored: moved aside


FINAL = frozenset({Stage.ACKED, Stage.RETURNED, Stage.LEFT, Stage.DEAD_LETTERED})


class AccountingError(AssertionError):
    """The tracker's books do not balance: a bug in the drain."""


@dataclass(slots=True, eq=False)
class Item:
    """One taken item and what the run knows about it."""

    taken: Taken
    stage: Stage
    tries: int = 0  # API calls started for it in this run
    ready_at: float = 0.0  # RETRYING: when it may start again
    last_error: TransientError | None = None  # PARKED: what it met last
    call: asyncio.Task | None = None  # CALLING, ANSWERED: its API call
    entry: Entry | None = None  # RECORDING: what the next batch writes for it
    blame: Reason | None = None  # its own call stopped the run: the reason its closing row gives

    @property
    def seq(self) -> int:
        return self.taken.seq

    def _finish(self, stage: Stage) -> None:
        # Done with for this run: keep the stage (a later move is a bug the tracker must
        # see), drop what was written for it, its call (and the body it returned) and why it
        # failed.
        self.stage = stage
        self.entry = None
        self.last_error = None
        self.call = None


class Tracker:
    """The stages of one run's items. Within a stage, items keep the order they arrived in.

    Items in the run's hands are held, by stage; items in a final stage are only counted.
    """

    def __init__(self) -> None:
        self._stages: dict[Stage, dict[int, Item]] = {stage: {} for stage in Stage if stage not in FINAL}
        self._finished: dict[Stage, int] = {stage: 0 for stage in Stage if stage in FINAL}
        self.taken = 0
        self._last_seq = -1

    def add(self, taken: Taken, stage: Stage = Stage.BUFFERED) -> Item:
        """Start tracking an item the run has just taken (in take order)."""
        if stage in FINAL:
            raise AccountingError(f"{taken.request_id} cannot be taken straight into {stage}")
        # The queue numbers items as it takes them, so a seq at or below the last one seen is
        # an item taken twice, whether it is still held or already finished (and forgotten).
        if taken.seq <= self._last_seq:
            raise AccountingError(f"item {taken.seq} ({taken.request_id}) was taken twice")
        self._last_seq = taken.seq
        item = Item(taken, stage)
        self._stages[stage][item.seq] = item
        self.taken += 1
        return item

    def move(self, item: Item, stage: Stage) -> None:
        if item.stage in FINAL:
            raise AccountingError(f"{item.taken.request_id} is already {item.stage}, cannot become {stage}")
        del self._stages[item.stage][item.seq]
        if stage in FINAL:
            self._finished[stage] += 1
            item._finish(stage)
        else:
            self._stages[stage][item.seq] = item
            item.stage = stage

    def move_all(self, items: list[Item], stage: Stage) -> None:
        for item in items:
            self.move(item, stage)

    def in_stage(self, stage: Stage) -> list[Item]:
        """The items in `stage` (not a final one), oldest arrival first (a copy: moving them is safe)."""
        return list(self._stages[stage].values())

    def oldest(self, stage: Stage, n: int) -> list[Item]:
        """The first `n` items to have arrived in `stage`."""
        return list(islice(self._stages[stage].values(), max(0, n)))

    def count(self, stage: Stage) -> int:
        return self._finished[stage] if stage in FINAL else len(self._stages[stage])

    def held(self) -> int:
        """How many items the run still holds (in no final stage)."""
        return sum(len(items) for items in self._stages.values())

    def __iter__(self) -> Iterator[Item]:
        """The items still held (final ones are only counted)."""
        for items in self._stages.values():
            yield from items.values()

    def final_counts(self) -> dict[str, int]:
        """How many items ended the run in each final stage (for the run summary)."""
        return {str(stage): n for stage, n in self._finished.items()}

    def assert_accounted(self, *, finished: bool = False) -> None:
        """Every item taken is in exactly one stage (and, if `finished`, a final one): each
        held item is filed once under its own stage, and the held and the finished add up to
        the items taken."""
        seen: set[int] = set()
        for stage, items in self._stages.items():
            for seq, item in items.items():
                if item.stage is not stage or item.seq != seq:
                    raise AccountingError(
                        f"{item.taken.request_id} is filed under {stage} but is {item.stage}"
                    )
                if seq in seen:
                    raise AccountingError(f"{item.taken.request_id} is in two stages")
                seen.add(seq)
                if finished and stage not in FINAL:
                    raise AccountingError(f"the run ended with {item.taken.request_id} still {stage}")
        accounted = len(seen) + sum(self._finished.values())
        if accounted != self.taken:
            raise AccountingError(f"{self.taken} items taken, {accounted} accounted for")
