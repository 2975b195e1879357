"""The rate limit across a hand-over, on a virtual clock (no timed assertions).

Two limiters stand for two Lambda containers: the first grants a backlog, stops granting
(`withhold`), and tells the second when its last start was (the seam note); the second
`start_after` that moment, its wall clock off by up to the margin NTP leaves. Whatever the
backlogs, the pause between them and the clocks' disagreement, the starts of both together
never exceed the rate in any one-second window, as a single limiter's never do.

The same holds for arrivals when calls leave late (a new connection's handshake), as long as
each tells the limiter when it went out (`note_sent`, which the API client's connector calls).
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coclib.ratelimit import SEAM_MARGIN_SECONDS, RateLimiter, Withheld
from tests.test_ratelimit import allowed_per_second, max_in_window, run_virtual

EPOCH = 1_700_000_000.0  # the wall clock's reading at virtual time 0


def hand_over(rate: float, first: int, second: int, pause: float, skew: float, *, follow: bool = True):
    """Grant times of both limiters, in one list, for a hand-over after `first` starts."""

    async def main(loop: asyncio.AbstractEventLoop) -> list[float]:
        old = RateLimiter(rate, clock=loop.time, wall=lambda: EPOCH + loop.time())
        new = RateLimiter(rate, clock=loop.time, wall=lambda: EPOCH + loop.time() + skew)
        starts: list[float] = []

        async def call(limiter: RateLimiter) -> None:
            await limiter.acquire()
            starts.append(loop.time())

        waiting = [asyncio.ensure_future(call(old)) for _ in range(first + 5)]
        while len(starts) < first:
            await asyncio.sleep(0.001)
        old.withhold()  # the hand-over: what has not started never will
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(r is None or isinstance(r, Withheld) for r in results)
        note = old.last_start()
        await asyncio.sleep(pause)  # settling, committing, the successor's poll
        if follow and note is not None:
            new.start_after(note)
        await asyncio.gather(*(call(new) for _ in range(second)))
        return starts

    return run_virtual(main)


@settings(max_examples=80, deadline=None)
@given(
    rate=st.sampled_from([1.0, 2.5, 7.0, 10.0, 20.0, 30.0]),
    first=st.integers(1, 70),
    second=st.integers(1, 70),
    pause=st.floats(0.0, 1.5),
    skew=st.floats(-SEAM_MARGIN_SECONDS, SEAM_MARGIN_SECONDS),
)
def test_two_drains_in_a_row_never_exceed_the_rate_together(rate, first, second, pause, skew):
    starts = hand_over(rate, first, second, pause, skew)
    assert max_in_window(starts) <= allowed_per_second(rate)


def test_without_the_seam_note_two_drains_in_a_row_can_exceed_the_rate():
    # The property above is not vacuous: a successor that ignores the note can go over.
    starts = hand_over(30.0, 60, 30, 0.0, 0.0, follow=False)
    assert max_in_window(starts) > allowed_per_second(30.0)


@pytest.mark.parametrize("rate", [1.0, 30.0])
def test_a_withheld_limiter_refuses_new_waiters_until_resumed(rate):
    async def main(loop: asyncio.AbstractEventLoop) -> tuple[int, int]:
        limiter = RateLimiter(rate, clock=loop.time)
        await limiter.acquire()
        limiter.withhold()
        with pytest.raises(Withheld):
            await limiter.acquire()
        refused = limiter.granted
        limiter.resume()
        await limiter.acquire()
        return refused, limiter.granted

    assert run_virtual(main) == (1, 2)


def arrivals_after_late_sends(rate: float, delays: list[float], *, note: bool = True) -> list[float]:
    """Arrival times of calls that go out `delay` x spacing after their grant (a new connection's
    handshake), each telling the limiter when it did (`note_sent`), as the API client's
    connector does."""

    async def main(loop: asyncio.AbstractEventLoop) -> list[float]:
        limiter = RateLimiter(rate, clock=loop.time)
        arrivals: list[float] = []

        async def call(delay: float) -> None:
            await limiter.acquire()
            await asyncio.sleep(delay * limiter.spacing)
            if note:
                limiter.note_sent()
            arrivals.append(loop.time())

        await asyncio.gather(*(call(d) for d in delays))
        return arrivals

    return run_virtual(main)


@settings(max_examples=80, deadline=None)
@given(
    rate=st.sampled_from([2.5, 10.0, 20.0, 30.0]),
    delays=st.lists(st.just(0.0) | st.floats(0.0, 0.9), min_size=10, max_size=90),
)
def test_calls_that_leave_late_push_the_next_group_back(rate, delays):
    # Any delay shorter than a group's spacing: the API still sees the limit kept.
    assert max_in_window(arrivals_after_late_sends(rate, delays)) <= allowed_per_second(rate)


def test_without_the_note_late_calls_bunch_up_with_the_next_group():
    delays = ([0.8] + [0.0] * 5) + [0.0] * 54  # the first call of the first group is late
    assert max_in_window(arrivals_after_late_sends(30.0, delays, note=False)) > allowed_per_second(30.0)
    assert max_in_window(arrivals_after_late_sends(30.0, delays)) <= allowed_per_second(30.0)
