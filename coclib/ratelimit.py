"""A wall-clock rate limiter shared by every API call in flight.

coc.py's own throttlers measure `time.process_time()` (CPU time), which barely moves
while a process waits on the network, so they cannot promise a rate. This one spaces
starts on the monotonic clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable

from coclib.errors import CocLibError

log = logging.getLogger(__name__)

# Two drains' clocks (two Lambda containers, NTP-synced) may disagree by a few milliseconds: a
# drain that follows another starts this much later than the spacing alone would allow.
SEAM_MARGIN_SECONDS = 0.02


class Withheld(CocLibError):
    """The limiter stopped granting starts (the drain is handing over): the call was never sent."""


class RateLimiter:
    """Starts granted in small groups at least `group` x `interval` seconds apart, in FIFO order.

    For a rate r, at most `capacity` = floor(r) starts (at least 1) may fall in any one
    second, so the spacing per start is 1 / capacity (1 / r when r < 1), stretched by
    `margin`: the limiter's clock is not the API's, and a request reaches the API a
    little after it was granted, by a varying amount. As long as that variation stays
    under `margin` x the spacing's second, the API never counts more than `capacity` in
    a second. The cost: running at 1 / (1 + margin) of the limit.

    Starts go in groups of `group`, by default the largest divisor of `capacity` up to a
    fifth of it (so whole groups fill a second exactly): 6 at a time every 204 ms at
    30/s. Every start wakes the process, and a wake-up costs about as much CPU as the call
    it lets go; a group shares one (bench/drain.md). Groups stay small all the same: the
    API sees a steady stream rather than `capacity` calls at the top of every second,
    which a limiter on its side that counts shorter windows would refuse.

    Waiters marked `priority` (a request from the priority lane: someone is waiting for it)
    are granted before plain waiters, each kind in the order it asked. At 30/s about 25 plain
    calls wait here (0.8 s); a priority call passes them all. But while plain waiters wait, at
    least one grant in `share_every` goes to them, the share the drain keeps for the queue
    (`worker.lanes`): without it, a stream of priority calls would hold plain ones here until
    the run ended, and they would never be sent.
    """

    def __init__(
        self,
        rate: float,
        *,
        margin: float = 0.02,
        group: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall: Callable[[], float] = time.time,
        share_every: int = 9,
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = max(1, math.floor(rate))
        self.interval = (1.0 + margin) / min(rate, self.capacity)
        wanted = max(1, self.capacity // 5) if group is None else group
        self.group = max(g for g in range(1, max(1, wanted) + 1) if self.capacity % g == 0)
        # Lateness forgiven per group: a tenth of the margin's share of a second's spacings
        # (2 ms at the default margin and rate >= 1), so 0.9 x margin is left for the
        # variation between grant and arrival.
        self.slack = 0.1 * margin * self.capacity * self.interval
        self._clock = clock
        self._sleep = sleep
        self._wall = wall  # unix time: how another process's limiter is followed
        self._next = -math.inf  # when the next group may start
        self._last_start = -math.inf  # when the latest granted waiter got to run
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._urgent: deque[asyncio.Future[None]] = deque()  # priority waiters, served first…
        self._share_every = share_every  # …but plain ones get one grant in this many
        self._passed_over = 0  # priority grants in a row while plain waiters waited
        self._dispenser: asyncio.Task[None] | None = None
        self._withheld = False
        self.granted = 0

    @property
    def spacing(self) -> float:
        """Seconds between the starts of two groups."""
        return self.group * self.interval

    def withhold(self) -> None:
        """Grant nothing more until `resume()`: every waiter, and every later `acquire()`, raises
        `Withheld`. Starts already granted stand."""
        self._withheld = True
        for waiters in (self._urgent, self._waiters):
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(Withheld("the rate limiter is withholding starts"))

    def resume(self) -> None:
        self._withheld = False

    def note_sent(self) -> None:
        """A request granted here has just gone out. It can leave well after its grant (a new
        connection's TCP and TLS handshakes): the next group is spaced from this moment too,
        so that the API, which counts arrivals, sees the spacing the limiter promises."""
        self._last_start = max(self._last_start, self._clock())

    def last_start(self) -> float | None:
        """Unix time of the latest start this limiter granted and saw run, or None."""
        if self._last_start == -math.inf:
            return None
        return self._wall() - (self._clock() - self._last_start)

    def start_after(self, unix_time: float) -> None:
        """Follow a limiter elsewhere (another process) whose latest start was at `unix_time`:
        the first start here comes at least a group's spacing, and a margin for the two
        clocks, after it, as if both were one limiter.

        A start cannot lie in the future: a note further ahead of this clock than a spacing and
        the margin comes from a clock that is wrong (a container's, or a jump), and is taken as
        that far ahead, no further. Followed to the letter, a note an hour ahead would hold
        every call back for an hour, run after run."""
        ahead = unix_time - self._wall()
        most = self.spacing + SEAM_MARGIN_SECONDS
        if ahead > most:
            log.warning(
                "the previous drain's last start is %.3f s ahead of this clock; one of the clocks "
                "is wrong: following it %.3f s ahead instead",
                ahead,
                most,
            )
            unix_time -= ahead - most
        there = self._clock() - (self._wall() - unix_time) + SEAM_MARGIN_SECONDS
        self._last_start = max(self._last_start, there)
        self._next = max(self._next, there + self.spacing)

    async def acquire(self, *, priority: bool = False) -> None:
        """Wait for a start. Priority waiters are served first; each kind in the order it asked.

        A waiter cancelled before its grant uses no start; one cancelled after it (before it
        got to run) has used its start, which is counted in `granted` like any other.
        """
        if self._withheld:
            raise Withheld("the rate limiter is withholding starts")
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        (self._urgent if priority else self._waiters).append(waiter)
        dispenser = self._dispenser
        if dispenser is None or dispenser.done() or dispenser.get_loop() is not loop:
            self._dispenser = loop.create_task(self._dispense())
        await waiter
        # The start is now, when this task runs again, which can be well after its grant: a
        # garbage collection or a long callback in between would otherwise bunch this start up
        # with the next group's (a 30 ms pause is enough to break a second's limit). The next
        # group is spaced from the latest start as well as from its own due time.
        self._last_start = max(self._last_start, self._clock())

    def _next_waiter(self) -> asyncio.Future[None]:
        """The next waiter to serve: priority first, plain ones their share."""
        urgent, waiters = self._urgent, self._waiters
        if urgent and not (waiters and self._passed_over >= self._share_every - 1):
            self._passed_over = self._passed_over + 1 if waiters else 0
            return urgent.popleft()
        self._passed_over = 0
        return waiters.popleft()

    async def _dispense(self) -> None:
        """Grant the waiters, a group at a time, until none is left."""
        waiters, urgent = self._waiters, self._urgent
        loop = asyncio.get_running_loop()
        spacing = self.spacing
        while waiters or urgent:
            now = self._clock()
            # Every waiter of the previous group has run by now (or was cancelled): their
            # wake-ups were queued before this task's timer fired.
            due = max(self._next, self._last_start - self.slack + spacing)
            if now < due:
                await self._sleep(due - now)
                continue
            granted = 0
            while (urgent or waiters) and granted < self.group:
                waiter = self._next_waiter()
                # A cancelled waiter gives up its place; so does one an ended event loop left.
                if not waiter.done() and waiter.get_loop() is loop:
                    waiter.set_result(None)
                    granted += 1
            if granted:
                self.granted += granted
                # Space from when this group was due if it came only a little late: a timer
                # wakes up to a millisecond or so after it was asked to, and losing that at
                # every group costs a few percent of the rate. Any later and space from when it
                # really happened. Due times then grow by at least `spacing` a group, and any
                # start of a group k + m comes at least m x spacing - slack after any start of
                # group k: more than a second for m = `capacity` / `group`.
                self._next = max(now - self.slack, due) + spacing
