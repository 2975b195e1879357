"""A wall-clock rate limiter shared by every API call in flight.

coc.py's own throttlers measure `time.process_time()` (CPU time), which barely moves
while a process waits on the network, so they cannot promise a rate. This one spaces
starts on the monotonic clock.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable


class RateLimiter:
    """Starts spaced at least `interval` seconds apart, granted in FIFO order.

    For a rate r, at most `capacity` = floor(r) starts (at least 1) may fall in any one
    second, so the spacing is 1 / capacity (1 / r when r < 1), stretched by `margin`:
    the limiter's clock is not the API's, and a request reaches the API a little after
    it was granted, by a varying amount. As long as that variation stays under
    `margin` x the spacing's second, the API never counts more than `capacity` in a
    second. Even spacing (rather than bursts of `capacity`) also keeps the average
    over any stretch of time under the rate. The cost: running at 1 / (1 + margin)
    of the limit.
    """

    def __init__(
        self,
        rate: float,
        *,
        margin: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = max(1, math.floor(rate))
        self.interval = (1.0 + margin) / min(rate, self.capacity)
        # Lateness forgiven per start: a tenth of the margin's share of `capacity` spacings
        # (2 ms at the default margin and rate >= 1), so 0.9 x margin is left for the
        # variation between grant and arrival.
        self.slack = 0.1 * margin * self.capacity * self.interval
        self._clock = clock
        self._sleep = sleep
        self._next = -math.inf
        self._lock = asyncio.Lock()
        self.granted = 0

    async def acquire(self) -> None:
        """Wait for a start. Waiters are served in the order they asked (asyncio.Lock is fair)."""
        async with self._lock:
            now = self._clock()
            while now < self._next:
                await self._sleep(self._next - now)
                now = self._clock()
            # Space from when this start was due if it came only a little late: a timer wakes
            # up to a millisecond or so after it was asked to, and losing that at every start
            # costs several percent of the rate (0.5 ms of a 34 ms spacing at 30/s). Any later
            # and space from when it really happened. Any k + 1 starts then span at least
            # k x interval - slack: more than a second for `capacity` + 1 of them.
            self._next = max(now - self.slack, self._next) + self.interval
            self.granted += 1
