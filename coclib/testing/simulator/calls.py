"""The simulator's call log and the two measures of a rate judged from arrival times.

`max_calls_in_window` and `tightest_span` take plain timestamps, so the same measure serves the
simulator's log (wall-clock arrivals) and a rate limiter's grant times on a virtual clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Call:
    """One API call as the simulator saw it (portal calls are not logged)."""

    at: float  # the simulator's clock (time.time() unless a test gave another) at arrival
    method: str
    path: str  # as sent, still URL-encoded: /v1/players/%232PP
    kind: str | None  # "player" | "clan" | "war", None for any other path
    tag: str | None  # normalised the API's way
    status: int
    token: str | None


def max_calls_in_window(times: Iterable[float], window: float = 1.0) -> int:
    """The most of `times` that fall in any half-open window [t, t + window)."""
    arrivals = sorted(times)
    best, first = 0, 0
    for last, at in enumerate(arrivals):
        while at - arrivals[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best


def tightest_span(times: Iterable[float], count: int) -> float | None:
    """The shortest time between the first and last of any `count` consecutive `times`.

    With a limit of L a second, the API refuses a call when this is under a second for
    `count` = L + 1; how far above a second it stays is the client's headroom. None when there
    are fewer than `count` times (or `count` < 2).
    """
    arrivals = sorted(times)
    if count < 2 or len(arrivals) < count:
        return None
    return min(arrivals[i + count - 1] - arrivals[i] for i in range(len(arrivals) - count + 1))
