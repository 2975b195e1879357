"""Which lane the next call comes from: the priority lane first, the queue never starved.

The priority lane holds requests someone is waiting for; the queue (the background sweep) may
hold tens of thousands. Calls go to the priority lane first, but while both lanes have work
waiting, at least one call in `QUEUE_SHARE_EVERY` goes to the queue, so a flood of priority
requests (a producer's bug, a bot pressing "refresh") cannot stop the sweep. When only one lane
has work it gets every call, and no debt carries over: the queue is owed its share only for the
calls it had to watch go elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

# While both lanes have work the queue gets one call in nine, at most eight priority calls in a
# row: that keeps it a tenth (the contract) over any stretch of calls, also one cut short where a
# run hands over and the next starts with the priority lane again. Exactly one in ten gave the
# queue 0.099 of a flood's calls over a few hand-overs (bench/priority.md).
QUEUE_SHARE_EVERY = 9


class LaneShare:
    """Picks calls from two lanes' candidates, each in its own order. Lives as long as a run."""

    def __init__(self, every: int = QUEUE_SHARE_EVERY) -> None:
        self.every = every
        self.passed_over = 0  # calls that went to the priority lane while the queue had work

    def pick(
        self, priority: Sequence[T], queue: Sequence[T], n: int, *, queue_waits: bool = False
    ) -> list[T]:
        """Up to `n` candidates, priority first, the queue's share kept; each lane's order kept.

        `queue_waits`: the queue has work beyond `queue` (not taken yet, or waiting to be tried
        again). Then the priority lane's run stops where the queue's turn is due, even with no
        queue candidate at hand: the queue's next item is picked first next time.
        """
        picked: list[T] = []
        p = q = 0
        while len(picked) < n:
            has_queue = q < len(queue)
            owed = self.passed_over >= self.every - 1
            if has_queue and (p >= len(priority) or owed):
                picked.append(queue[q])
                q += 1
                self.passed_over = 0
            elif p < len(priority) and not (owed and queue_waits):
                picked.append(priority[p])
                p += 1
                self.passed_over = self.passed_over + 1 if has_queue or queue_waits else 0
            else:
                break
        return picked
