"""A wall-clock rate limiter shared by every API call in flight.

coc.py's own throttlers measure `time.process_time()` (CPU time), which barely moves
while a process waits on the network, so they cannot promise a rate. This one counts
starts on the monotonic clock.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable


class RateLimiter:
    """At most `capacity` starts in any window of `window` seconds, granted in FIFO order.

    For a rate r the capacity is floor(r) (at least 1) and the window is one second (longer
    when r < 1), stretched by `margin`: the limiter's clock is not the API's, and a request
    reaches the API a little after it was granted, by a varying amount. Spacing the limiter's
    windows `margin` apart keeps the promise as the API counts, at the cost of running at
    1 / (1 + margin) of the limit.
    """

    def __init__(
        self,
        rate: float,
        *,
        margin: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = max(1, math.floor(rate))
        self.window = max(1.0, self.capacity / rate) * (1.0 + margin)
        self._clock = clock
        self._sleep = sleep
        self._starts: deque[float] = deque()
        self._lock = asyncio.Lock()
        self.granted = 0

    async def acquire(self) -> None:
        """Wait for a start. Waiters are served in the order they asked (asyncio.Lock is fair)."""
        async with self._lock:
            while True:
                now = self._clock()
                horizon = now - self.window
                starts = self._starts
                while starts and starts[0] <= horizon:
                    starts.popleft()
                if len(starts) < self.capacity:
                    starts.append(now)
                    self.granted += 1
                    return
                await self._sleep(starts[0] - horizon)
