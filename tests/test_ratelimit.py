"""Properties of `coclib.ratelimit.RateLimiter`, on a virtual clock (no timed assertions).

Every test runs the limiter inside an event loop whose clock is virtual: `loop.time()`
returns a counter, and when every task is waiting the loop jumps the counter to the next
timer instead of sleeping (the selector is asked to wait `timeout` seconds; we add the
timeout to the counter and poll without blocking). The limiter gets that clock and
`asyncio.sleep` injected, so its waits cost no wall time and its grant times are exact.

Arrivals are tasks that sleep (virtually) until their arrival time, note the order in which
they asked, call `acquire()` and note the virtual time of the grant.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import selectors
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coclib.ratelimit import RateLimiter

MARGIN = 0.02  # the limiter's default, restated: the tests must notice if it changes
EPS = 1e-9


class _VirtualSelector(selectors.DefaultSelector):
    """A selector whose waits advance a virtual clock instead of blocking."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None):
        if timeout is None:
            # Nothing scheduled and nothing ready: every task waits forever.
            raise AssertionError("deadlock: every task is waiting and no timer is pending")
        if timeout > 0:
            self.now += timeout
        return super().select(0)


class _VirtualLoop(asyncio.SelectorEventLoop):
    """`stall`: before a callback runs, sometimes (probability p) the clock jumps by up to
    `most` seconds, as if the callback before it (or a garbage collection) had taken that long."""

    def __init__(self, stall: tuple[float, float] | None = None, seed: int = 0) -> None:
        self._virtual = _VirtualSelector()
        self._stall = stall
        self._stall_rng = random.Random(seed)
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now

    def call_soon(self, callback, *args, context=None):
        if self._stall is not None:
            p, most = self._stall
            if self._stall_rng.random() < p:
                super().call_soon(self._pause, self._stall_rng.uniform(0.0, most))
        return super().call_soon(callback, *args, context=context)

    def _pause(self, seconds: float) -> None:
        self._virtual.now += seconds


def run_virtual(main, *, stall: tuple[float, float] | None = None, seed: int = 0):
    """Run `main()` (a coroutine function taking the loop) on a virtual-time loop."""
    loop = _VirtualLoop(stall, seed)
    try:
        return loop.run_until_complete(main(loop))
    finally:
        loop.close()


@dataclass
class Trace:
    asked: list[int]  # arrival indices in the order they called acquire()
    granted: list[tuple[int, float]]  # (arrival index, virtual grant time) in grant order
    ask_time: dict[int, float]
    limiter: RateLimiter


def simulate(
    rate: float,
    arrivals: Sequence[float],
    *,
    overshoot: float = 0.0,
    stall: tuple[float, float] | None = None,
    seed: int = 0,
    urgent: frozenset[int] = frozenset(),
) -> Trace:
    """Arrival i calls acquire() at virtual time arrivals[i] (sorted, seconds from 0), with
    `priority=True` if i is in `urgent`.

    `overshoot`: the limiter's sleeps last up to this much longer than asked (uniformly), as
    real timers do (epoll rounds up to the millisecond; a busy loop wakes later still).
    `stall`: pauses between callbacks (see `_VirtualLoop`), e.g. between a grant and the
    moment its waiter runs. A grant's time is when its waiter runs (it sends then).
    """
    rng = random.Random(seed)

    async def late_sleep(delay: float) -> None:
        await asyncio.sleep(delay + rng.uniform(0.0, overshoot))

    async def main(loop: asyncio.AbstractEventLoop) -> Trace:
        limiter = RateLimiter(rate, clock=loop.time, sleep=late_sleep if overshoot else asyncio.sleep)
        asked: list[int] = []
        ask_time: dict[int, float] = {}
        granted: list[tuple[int, float]] = []

        async def arrive(i: int, at: float) -> None:
            await asyncio.sleep(max(0.0, at - loop.time()))
            asked.append(i)
            ask_time[i] = loop.time()
            await limiter.acquire(priority=i in urgent)
            granted.append((i, loop.time()))

        await asyncio.gather(*(arrive(i, at) for i, at in enumerate(arrivals)))
        return Trace(asked, granted, ask_time, limiter)

    return run_virtual(main, stall=stall, seed=seed)


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """The most grants whose time falls in any half-open window [t, t + window)."""
    ordered = sorted(times)
    best, first = 0, 0
    for last, at in enumerate(ordered):
        while at - ordered[first] >= window - EPS:
            first += 1
        best = max(best, last - first + 1)
    return best


def allowed_per_second(rate: float) -> int:
    return max(1, math.floor(rate))


rates = st.one_of(
    st.floats(min_value=0.5, max_value=30.0, allow_nan=False),
    st.integers(min_value=1, max_value=30).map(float),
)
# Gaps between arrivals: mostly bursts (zero), some short, some long enough to drain the window.
gaps = st.one_of(
    st.just(0.0),
    st.floats(min_value=0.0, max_value=0.2),
    st.floats(min_value=0.0, max_value=3.0),
)
arrival_patterns = st.lists(gaps, min_size=1, max_size=120).map(
    lambda gs: [sum(gs[: i + 1]) for i in range(len(gs))]
)


@settings(max_examples=300, deadline=None)
@given(
    rate=rates,
    arrivals=arrival_patterns,
    overshoot=st.sampled_from([0.0, 0.001, 0.005, 0.05]),
    stall=st.sampled_from([None, (0.05, 0.005), (0.02, 0.05), (0.2, 0.03)]),
    seed=st.integers(0, 1000),
)
def test_no_one_second_window_holds_more_than_the_rate(rate, arrivals, overshoot, stall, seed):
    trace = simulate(rate, arrivals, overshoot=overshoot, stall=stall, seed=seed)

    times = [t for _, t in trace.granted]
    assert len(times) == len(arrivals)
    assert max_in_window(times, 1.0) <= allowed_per_second(rate)
    # And with most of the margin to spare on the limiter's own clock: what is left is what
    # absorbs the varying delay between a grant and the API seeing the request.
    spare = (1 + 0.85 * MARGIN) * max(1.0, 1.0 / rate)
    assert max_in_window(times, spare) <= allowed_per_second(rate)
    if rate < 1:
        # Below one a second the promise is about the rate itself: at most one in any 1/rate s.
        assert max_in_window(times, 1.0 / rate) <= 1


@settings(max_examples=300, deadline=None)
@given(
    rate=rates,
    arrivals=arrival_patterns,
    urgent=st.sets(st.integers(0, 119)).map(frozenset),
    overshoot=st.sampled_from([0.0, 0.005]),
    seed=st.integers(0, 1000),
)
def test_priority_waiters_pass_plain_ones_and_the_rate_still_holds(rate, arrivals, urgent, overshoot, seed):
    trace = simulate(rate, arrivals, overshoot=overshoot, seed=seed, urgent=urgent)

    times = [t for _, t in trace.granted]
    assert len(times) == len(arrivals)
    assert max_in_window(times, 1.0) <= allowed_per_second(rate)
    order = [i for i, _ in trace.granted]
    # Each kind is served in the order it asked.
    assert [i for i in order if i in urgent] == [i for i in trace.asked if i in urgent]
    assert [i for i in order if i not in urgent] == [i for i in trace.asked if i not in urgent]
    # A plain waiter is granted while a priority waiter that asked before that grant waits only
    # as the plain ones' share: after eight priority grants in a row.
    position = {i: k for k, i in enumerate(order)}
    for p, t in trace.granted:
        if p in urgent:
            continue
        passed = [u for u in urgent if u < len(arrivals) and trace.ask_time[u] < t - EPS]
        if any(position[u] > position[p] for u in passed):
            before = order[: position[p]]
            assert len(before) >= 8 and all(i in urgent for i in before[-8:]), (p, before[-8:])
    # And plain waiters, while they wait, get at least one grant in nine.
    waiting_plain = 0
    for k, i in enumerate(order):
        if i not in urgent:
            waiting_plain = 0
            continue
        plain_waiting = any(
            j not in urgent and position[j] > k and trace.ask_time[j] < times[k] - EPS for j in order
        )
        waiting_plain = waiting_plain + 1 if plain_waiting else 0
        assert waiting_plain <= 8, (k, i)


def test_plain_waiters_keep_one_grant_in_nine_under_a_flood_of_priority_ones():
    # Five plain waiters, then 45 priority ones, all at once: the plain ones are not held until
    # the flood is over (a run would end first and never send them), but get every ninth grant.
    trace = simulate(30.0, [0.0] * 50, urgent=frozenset(range(5, 50)))
    order = [i for i, _ in trace.granted]
    assert [order.index(p) for p in range(5)] == [8, 17, 26, 35, 44]


@settings(max_examples=300, deadline=None)
@given(rate=rates, arrivals=arrival_patterns)
def test_grants_are_fifo_and_an_idle_limiter_does_not_make_anyone_wait(rate, arrivals):
    trace = simulate(rate, arrivals)

    # FIFO: served in exactly the order they asked.
    assert [i for i, _ in trace.granted] == trace.asked
    # Nobody is granted before asking.
    for i, t in trace.granted:
        assert t >= trace.ask_time[i] - EPS
    # Liveness: whoever asks when nobody is waiting and nothing was granted for a whole
    # window (1 s stretched by the margin; 1/rate s when rate < 1) is granted at once.
    quiet = max(1.0, 1.0 / rate) * (1 + MARGIN)
    times = [t for _, t in trace.granted]
    for k, (i, t) in enumerate(trace.granted):
        asked = trace.ask_time[i]
        if k == 0 or times[k - 1] <= asked - quiet:
            assert t == pytest.approx(asked, abs=1e-9), (k, asked, t)


@settings(max_examples=100, deadline=None)
@given(rate=rates, overshoot=st.sampled_from([0.0, 0.0005, 0.001]), seed=st.integers(0, 1000))
def test_throughput_under_backlog_approaches_the_limit(rate, overshoot, seed):
    """Also when the limiter's sleeps overshoot by up to a millisecond, as real timers do: at
    30/s the spacing is 34 ms, and losing 0.5 ms at every start would cost 1.5% of the rate."""
    # A backlog: everyone asks at once, far more than one window's worth.
    n = allowed_per_second(rate) * 40 + 1
    trace = simulate(rate, [0.0] * n, overshoot=overshoot, seed=seed)

    times = [t for _, t in trace.granted]
    achieved = (n - 1) / (times[-1] - times[0])
    # What the limit allows: floor(rate) in any second (one per 1/rate s below one a second),
    # run at 1 / (1 + margin) of that so the API's clock sees the limit kept.
    allowed = (rate if rate < 1 else allowed_per_second(rate)) / (1 + MARGIN)
    assert achieved == pytest.approx(allowed, rel=0.01)
    assert achieved <= rate
    if rate == int(rate) or rate < 1:
        assert achieved >= 0.98 * rate / (1 + MARGIN)


@settings(max_examples=100, deadline=None)
@given(rate=rates, before=st.integers(0, 5), after=st.integers(0, 5), cancel_at=st.floats(0.0, 3.0))
def test_a_cancelled_waiter_neither_blocks_the_queue_nor_uses_a_start(rate, before, after, cancel_at):
    """Everyone asks at 0; one waiter in the middle gives up at `cancel_at`. The others are
    granted exactly when they would have been had it never asked (or, if the limiter had
    granted its start before it gave up, exactly as if it had stayed)."""

    async def main(loop):
        limiter = RateLimiter(rate, clock=loop.time, sleep=asyncio.sleep)
        granted: dict[str, float] = {}

        async def want(name: str) -> None:
            await limiter.acquire()
            granted[name] = loop.time()

        names = [f"b{i}" for i in range(before)] + ["quitter"] + [f"a{i}" for i in range(after)]
        tasks = {name: asyncio.ensure_future(want(name)) for name in names}
        await asyncio.sleep(cancel_at)
        tasks["quitter"].cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        return granted, limiter.granted

    granted, count = run_virtual(main)
    others = [f"b{i}" for i in range(before)] + [f"a{i}" for i in range(after)]
    assert all(name in granted for name in others)
    # The quitter used a start if and only if the limiter counts one more than the others took
    # (it may have been granted and cancelled before it got to run: that start is spent).
    assert count - len(others) in (0, 1)
    assert "quitter" not in granted or count == len(others) + 1
    quit_early = count == len(others)
    reference = simulate(rate, [0.0] * (before + after + (0 if quit_early else 1)))
    expected = [t for _, t in reference.granted]
    if not quit_early:
        expected.pop(before)  # the quitter's own start
    assert [granted[name] for name in others] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("bad", [0, -1, -0.5])
def test_rate_must_be_positive(bad):
    with pytest.raises(ValueError):
        RateLimiter(bad)


def test_the_virtual_clock_really_is_virtual():
    # Guard for the harness itself: the limiter's waits move the virtual clock by exactly what
    # it asked for. Grant times on an exact grid (one start every 1.02 s at 1/s, the first gap
    # short by the lateness the limiter forgives) could not come from a real clock, whose
    # wake-ups are always a little late; and 50 of them span 49 virtual seconds in no wall time.
    trace = simulate(1.0, [0.0] * 50)
    limiter = trace.limiter
    expected = [0.0] + [k * limiter.interval - limiter.slack for k in range(1, 50)]
    assert limiter.interval == pytest.approx(1 + MARGIN)
    assert [t for _, t in trace.granted] == pytest.approx(expected, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(rate=st.integers(min_value=1, max_value=30).map(float), backlog=st.integers(1, 200))
def test_a_backlog_is_granted_in_groups_that_divide_the_capacity(rate, backlog):
    """One wake-up per group, not per start: under a backlog every grant shares its instant
    with the rest of its group, and the groups come `group` x `interval` apart."""
    trace = simulate(rate, [0.0] * backlog)
    limiter = trace.limiter
    assert allowed_per_second(rate) % limiter.group == 0
    instants = sorted({round(t, 9) for _, t in trace.granted})
    assert len(instants) == math.ceil(backlog / limiter.group)
    gaps = [b - a for a, b in itertools.pairwise(instants)]
    spacing = limiter.group * limiter.interval
    # (The first gap may be short by the lateness the limiter forgives; never by more.)
    assert all(spacing - limiter.slack - EPS <= gap <= spacing + EPS for gap in gaps)


def test_the_group_is_a_divisor_of_the_capacity_up_to_a_fifth_of_it():
    assert [RateLimiter(r).group for r in (0.5, 1, 9, 10, 20, 25, 29.9, 30)] == [1, 1, 1, 2, 4, 5, 1, 6]
    assert RateLimiter(30, group=5).group == 5
    assert RateLimiter(30, group=4).group == 3  # 4 does not divide 30
    assert RateLimiter(28).group == 4
    assert RateLimiter(30, group=0).group == 1


def test_a_limiter_outlives_its_event_loop():
    """The worker keeps one limiter for a process; a CLI command or a test may run several
    event loops one after the other, and a loop may end with a waiter still queued."""
    limiter = RateLimiter(2)

    left: list[asyncio.Future] = []

    async def leave_a_waiter_behind() -> None:
        await limiter.acquire()
        left.append(asyncio.ensure_future(limiter.acquire()))  # for the next group: the loop ends first
        await asyncio.sleep(0)

    first = asyncio.new_event_loop()
    first.run_until_complete(leave_a_waiter_behind())
    first.close()  # closed, not cancelled: its dispenser task is left pending for good
    first.set_exception_handler(lambda loop, context: None)  # (and "destroyed but pending" is expected)

    async def acquire_once() -> None:
        await asyncio.wait_for(limiter.acquire(), timeout=60)  # a bound on a hang, not a timing

    asyncio.run(acquire_once())
    assert limiter.granted >= 2
