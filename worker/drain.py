"""The drain: take refresh requests, call the API at the rate limit, record every outcome.

One run, in order:

1. take the Redis lease (another drainer holds it: return `lease_held`, touch nothing);
2. check Postgres (down: dequeue nothing) and log in to the API (refused: dequeue nothing);
3. recover the in-flight list a dead run left behind;
4. loop: take items from the priority lane (every time round) and the queue (a prefetch at a
   time) into the in-flight list, write `attempted` rows for a group of calls and start them,
   priority first with the queue's tenth kept (`worker.lanes`), harvest results, write
   terminal rows and snapshots in batches (one transaction each) and acknowledge what they
   settled;
5. stop on empty lanes (a scheduled run first lingers, `DrainPolicy.linger`), the deadline, an
   open circuit, a lost lease, cancellation or an internal error; put whatever is unfinished
   back at the head of its lane in its original order with a `skipped-deadline` or `deferred`
   row, and record the run's summary. A run that lost its lease writes the rows but moves
   nothing in Redis: every change it makes to the in-flight list is fenced on its lease
   (`RefreshQueue.fenced`), so what it held stays there for the lease holder's recovery.

Every item taken is in exactly one `worker.tracker.Stage` from the moment it is taken to the
end of the run. Request faults become `failed` rows and the run goes on. Timeouts, 5xx and
garbled answers are tried again (a bounded number of times) and only then `failed`; when
several different requests meet them in a row, or any systemic fault arrives, the circuit
opens. Whatever Postgres refuses to store is narrowed down to the request that caused it,
which fails `unstorable` while the rest of its batch commits. Anything else raised inside a
run stops it with `internal_error` after recording what it can.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import RedisError

from coclib.coc_api import CocApi, Fetched
from coclib.db import Database
from coclib.errors import (
    DatabaseUnavailable,
    RequestError,
    SystemicError,
    TransientError,
)
from coclib.lease import Lease
from coclib.queue import Lane, RefreshQueue
from coclib.ratelimit import RateLimiter, Withheld
from coclib.reasons import Reason
from coclib.snapshots import snapshot_of
from coclib.sqlfiles import load_queries
from ledger import recovery
from ledger.outcomes import SETTLING, LedgerRow, Outcome
from ledger.partitions import ensure_partitions
from ledger.writer import Entry, LedgerWriter, SummaryOrMaker, Written
from worker.books import Books
from worker.freshness import FreshnessGate
from worker.lanes import LaneShare
from worker.recovery import recover
from worker.stopping import Stop, StopCode, Stopping
from worker.tracker import AccountingError, Item, Stage

log = logging.getLogger(__name__)

__all__ = ["Drain", "DrainPolicy", "RunSummary", "Stop", "StopCode"]

# The run's clock for deadlines, flushes and backoffs: the one the event loop's timeouts use.
_now = time.monotonic


@dataclass(frozen=True)
class DrainPolicy:
    """The drain's knobs. The defaults suit 10-30 requests/s and 100-300 ms API latency."""

    max_in_flight: int = 32  # calls started and not finished, at most (less at lower rates)
    dispatch_batch: int = 8  # start calls in groups: one `attempted` transaction per group
    prefetch: int = 64  # items moved to the in-flight list per take
    flush_rows: int = 64  # terminal rows per transaction…
    flush_interval: float = 0.5  # …or at least this often (seconds)
    call_timeout: float = 10.0  # one API call from when the limiter lets it go
    max_tries: int = 3  # per request per run, for timeouts, 5xx and garbled answers
    retry_backoff: float = 0.5  # seconds before the first transient retry; doubles
    transient_streak: int = 5  # different requests failing transiently in a row: API down
    finish_reserve: float = 1.0  # seconds before the deadline kept for the last writes
    max_requests: int | None = None  # take at most this many items (POST /refresh)
    interrupted_limit: int = 2  # a request found interrupted this many times is `failed`
    unexpected_limit: int = 2  # a request whose call stopped this many runs is `failed`
    takeover_wait: float = 15.0  # a successor waits this long for the running drain to hand over
    freshness: bool = True  # settle requests for fresh snapshots `skipped-fresh` (FRESHNESS)
    linger: float = 0.0  # a scheduled run with both lanes empty waits this long for new requests…
    linger_poll: float = 0.25  # …looking at them this often (one Redis script each time)
    priority_poll: float = 0.1  # a busy run looks at an empty priority lane again this often
    checks: bool = False  # check the tracker's books after every step (tests)


@dataclass
class RunSummary:
    """What a run did, as returned by the handler and stored in `refresh_run_summaries`."""

    run_id: str
    started_at: float
    stopped: StopCode = StopCode.QUEUE_EMPTY
    cause: Reason | None = None
    detail: str | None = None
    finished_at: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    taken: int = 0
    recovered: dict[str, int] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)  # where the taken items ended
    api_requests: int = 0
    queue_size: int | None = None
    priority_queue_size: int | None = None
    inflight_size: int | None = None
    took_over_from: str | None = None  # the run that handed the lease to this one
    # Per kind: committed `fetched` rows and how many of them found the body changed.
    fetch_changes: dict[str, dict[str, int]] = field(default_factory=dict)
    error: BaseException | None = field(default=None, repr=False)  # for `internal_error`
    handover_failed: bool = False  # stopped to hand over, but the successor was gone

    @property
    def duration_s(self) -> float:
        return max(0.0, self.finished_at - self.started_at)

    @property
    def processed_requests(self) -> int:
        """Requests settled in this run (rows with a settling outcome: fetched, failed, skipped-fresh)."""
        return sum(self.counts.get(outcome, 0) for outcome in SETTLING)

    def as_dict(self) -> dict[str, Any]:
        duration = self.duration_s
        return {
            "run_id": self.run_id,
            "stopped": str(self.stopped),
            "cause": None if self.cause is None else str(self.cause),
            "detail": self.detail,
            "started_at": round(self.started_at, 3),
            "finished_at": round(self.finished_at, 3),
            "duration_s": round(duration, 3),
            "counts": {str(k): v for k, v in self.counts.items()},
            "processed_requests": self.processed_requests,
            "taken": self.taken,
            "recovered": self.recovered,
            "items": self.items,
            "queue_size": self.queue_size,
            "priority_queue_size": self.priority_queue_size,
            "inflight_size": self.inflight_size,
            "api_requests": self.api_requests,
            # Over at least a second: one call in a 30 ms run is not a rate of 33/s.
            "api_requests_per_second": round(self.api_requests / max(duration, 1.0), 2),
            "took_over_from": self.took_over_from,
            # The useful refreshes per call, per kind: the share of fetches that changed the body.
            "fetch_changes": {
                kind: {**c, "share": round(c["changed"] / c["fetched"], 4) if c["fetched"] else None}
                for kind, c in sorted(self.fetch_changes.items())
            },
        }


# A run that handed over to nobody is followed by another only if this much time is left.
RERUN_MIN_SECONDS = 5.0


class Drain:
    """Drains the refresh queue. Holds no per-run state: `run()` may be called again."""

    def __init__(
        self,
        *,
        queue: RefreshQueue,
        db: Database,
        connect_api: Callable[[], Awaitable[CocApi]],
        limiter: RateLimiter,
        policy: DrainPolicy | None = None,
        on_progress: Callable[[Counter[str]], None] | None = None,
    ) -> None:
        self.queue = queue
        self.db = db
        self.connect_api = connect_api
        self.limiter = limiter
        self.policy = policy or DrainPolicy()
        self.on_progress = on_progress

    async def run(
        self, deadline: float, *, policy: DrainPolicy | None = None, scheduled: bool = False
    ) -> RunSummary:
        """Drain until the queue is empty or `deadline` (a `time.monotonic()` value) draws near.

        A `scheduled` run takes over from a running scheduled drain (which hands the lease
        over within a second or so), and yields in turn to the next scheduled run. Any other
        run finds a running drain and returns `lease_held`, and is never asked to yield. The
        summary is that of the last run.
        """
        while True:
            summary = await _Run(self, deadline, policy or self.policy, scheduled=scheduled).execute()
            # Stopped for a successor that never came (it died after announcing itself): drain
            # on in a new run rather than leave the queue to the next schedule.
            if not summary.handover_failed or deadline - _now() < RERUN_MIN_SECONDS:
                return summary
            log.warning("run %s stopped for a successor that never came; draining on", summary.run_id)


class _Run:
    """The state of one run. Everything here lives and dies with it."""

    def __init__(self, drain: Drain, deadline: float, policy: DrainPolicy, *, scheduled: bool) -> None:
        self.drain = drain
        self.scheduled = scheduled
        self.policy = policy
        self.soft_deadline = deadline - policy.finish_reserve
        # Postgres waits no longer than the run may: every statement ends by the deadline less
        # half the reserve, the other half being for Redis (acknowledging, putting back) and the
        # lease. One bound for the whole run: a flush that starts just before the soft deadline
        # still has the reserve's first half, rather than a timeout of a few milliseconds.
        self.db = drain.db.bounded(deadline - policy.finish_reserve / 2)
        self.run_id = uuid.uuid4()
        self.summary = RunSummary(run_id=str(self.run_id), started_at=time.time())
        self.lease = Lease(drain.queue.redis, drain.queue.keys, owner=str(self.run_id), yields=scheduled)
        # Everything this run does to the in-flight list, recovery included, is fenced on its lease:
        # stalled past the lease's TTL and woken after another drain took over, it can no longer
        # move, acknowledge or take behind that drain's back (`LeaseLost`; the queue's docstring).
        # A hand-over keeps the fence: the run finishes before it gives the lease on.
        self.queue = drain.queue.fenced(self.lease.value)
        self.api: CocApi | None = None
        self.granted_at_start = drain.limiter.granted
        # Enough calls in flight to keep the limiter busy through 500 ms of API latency, in
        # groups, but no more: a call waiting in the limiter has its `attempted` row already.
        rate = drain.limiter.rate
        self.dispatch_batch = min(policy.dispatch_batch, max(1, math.ceil(rate / 4)))
        self.max_in_flight = min(policy.max_in_flight, math.ceil(rate / 2) + 2 * self.dispatch_batch)

        self.stopping = Stopping()
        self.books = Books(
            self.queue,
            LedgerWriter(self.db, self.run_id),
            self.stopping,
            run_id=self.summary.run_id,
            counts=self.summary.counts,
            on_progress=drain.on_progress,
            changes=self.summary.fetch_changes,
        )
        self.items = self.books.items
        self.gate = FreshnessGate(drain.db, self.books, enabled=policy.freshness)
        self.last_flush = _now()
        self.streak: set[str] = set()  # requests that met a transient error since the API last answered
        self.seen_empty = dict.fromkeys(Lane, False)  # each lane, at the last look at it
        self.priority_looked_at = -math.inf  # when the priority lane was last looked at
        self.lanes = LaneShare()
        self.idle_since: float | None = None  # both lanes found empty with nothing to do, since
        self._look_again = False
        self.prepared = False
        self._wake = asyncio.Event()

    @property
    def stopped(self) -> bool:
        return self.stopping.stopped

    # -- the run --------------------------------------------------------------------------

    async def execute(self) -> RunSummary:
        try:
            acquired = await self._take_lease()
        except asyncio.CancelledError:
            # Cancelled mid-command, the lease may be ours on the server all the same.
            await asyncio.shield(self.lease.give_up(last_start=None))
            raise
        except RedisError as exc:
            self.stopping.redis_fault(exc)
            return await self._summarise()
        except Exception as exc:  # before the lease: nothing was taken, nothing is to record
            self.stopping.internal_error(exc)
            return await self._summarise()
        if not acquired:
            if not self.stopped:
                log.info("another drain holds the lease; not draining")
                self.stopping.halt(StopCode.LEASE_HELD, None, "another drain is running")
            return await self._summarise()
        try:
            try:
                await self._follow_the_seam()
                if not self.prepared:
                    await self._prepare()
                if not self.stopped:
                    await self._recover()
                if not self.stopped:
                    await self._loop()
            except asyncio.CancelledError:
                self.stopping.halt(StopCode.CANCELLED, Reason.CANCELLED, "the run was cancelled")
                # The final writes must happen even though we were cancelled.
                await asyncio.shield(self._finish())
                raise
            except RedisError as exc:
                # Finishing may work (the outage may be brief); if not, what we took stays in
                # the in-flight list for the next run to recover. A `LeaseLost` (the fence
                # refused a change) stops the run `lease_lost`, and its finish moves nothing.
                self.stopping.redis_fault(exc)
            except AccountingError:
                raise
            except Exception as exc:
                self.stopping.internal_error(exc)
            if self.stopping.database_up:
                await self._finish()
            if self.policy.checks:
                self.items.assert_accounted(finished=True)
        finally:
            handing_over = self.stopping.is_(StopCode.HANDED_OVER)
            last_start = self.drain.limiter.last_start()
            handed = await self.lease.give_up(last_start=last_start, to_successor=handing_over)
            self.summary.handover_failed = handing_over and not handed
            self.drain.limiter.resume()
        return await self._summarise()

    async def _take_lease(self) -> bool:
        """The lease, taken at once, or (a scheduled run) handed over by the running drain."""
        if await self.lease.acquire():
            return True
        if not self.scheduled or not await self.lease.holder_yields() or await self.lease.successor_waits():
            return False
        # Get ready before announcing: the running drain stops soon after, and the API should
        # not sit idle while this run logs in.
        await self._prepare()
        if self.stopped:
            return False  # not ready (Postgres, the API): the running drain goes on
        return await self.lease.take_over(wait=self.policy.takeover_wait)

    async def _follow_the_seam(self) -> None:
        """Start the first call a spacing after the previous lease holder's last one."""
        seam = await self.lease.seam()
        if seam is None:
            return
        if seam.last_start is not None:
            self.drain.limiter.start_after(seam.last_start)
        if self.lease.took_over:
            self.summary.took_over_from = seam.from_run
            log.info("took over from run %s", seam.from_run)

    async def _prepare(self) -> None:
        """Check Postgres and log in to the API; halt (taking nothing) if either fails."""
        self.prepared = True
        try:
            await self.db.fetch_one(load_queries()["ping"])
        except DatabaseUnavailable as exc:
            self.stopping.halt(StopCode.CIRCUIT_OPEN, exc.reason, exc.detail)
            return
        self.stopping.database_up = True  # from here on, the run can record its summary
        await ensure_partitions(self.db)  # never raises: the default partition catches rows
        try:
            self.api = await self.drain.connect_api()
        except SystemicError as exc:
            self.stopping.halt(StopCode.CIRCUIT_OPEN, exc.reason, exc.detail)

    async def _recover(self) -> None:
        await recover(
            self.books, self.db, interrupted_limit=self.policy.interrupted_limit, stats=self.summary.recovered
        )
        self.last_flush = _now()

    async def _loop(self) -> None:
        while not self.stopped:
            if _now() >= self.soft_deadline:
                self.stopping.halt(StopCode.DEADLINE, Reason.DEADLINE, "the deadline buffer was reached")
                break
            if self.lease.lost.is_set():
                self.stopping.lease_lost("the drain lease expired or was taken")
                break
            if self.scheduled and self.lease.successor_waiting.is_set():
                successor = (self.lease.successor or "").split(" ")[0]
                self.stopping.halt(StopCode.HANDED_OVER, Reason.HANDED_OVER, f"run {successor} takes over")
                break
            self._harvest()
            if not self.stopped:
                await self._refill()
            if not self.stopped:
                await self._dispatch()
            if not self.stopped and self._idle():
                if not all(self.seen_empty.values()):
                    continue  # look at the queue once more before calling it empty
                # Nothing left to learn from: the requests that ran out of tries fail, unless the
                # API is down.
                self._close_parked()
                if self._idle() and not self.stopped:
                    full = (
                        self.policy.max_requests is not None
                        and self.summary.taken >= self.policy.max_requests
                    )
                    if not full and await self._linger():
                        continue
                    self.stopping.halt(StopCode.MAX_REQUESTS if full else StopCode.QUEUE_EMPTY)
                    break
            recording = self.items.in_stage(Stage.RECORDING)
            if recording and (
                len(recording) >= self.policy.flush_rows
                or _now() - self.last_flush >= self.policy.flush_interval
                or any(i.taken.lane is Lane.PRIORITY for i in recording)  # someone is waiting
            ):
                await self._flush()
            if self.policy.checks:
                self.items.assert_accounted()
            if not self.stopped:
                await self._wait()

    async def _linger(self) -> bool:
        """Both lanes are empty: a scheduled run keeps its lease and looks again shortly, for up
        to `linger` seconds since it was last busy (and within its deadline); False: stop.

        Waiting is on Redis, a short poll: every `linger_poll` seconds the next refill runs the
        take script once, so a request pushed meanwhile is taken within that time. A successor
        announcing itself or a lost lease ends the wait at once (the loop then stops)."""
        if not self.scheduled or self.policy.linger <= 0:
            return False
        now = _now()
        if self.idle_since is None:
            self.idle_since = now
        until = min(self.idle_since + self.policy.linger, self.soft_deadline)
        if now >= until:
            return False
        if self.items.count(Stage.RECORDING):
            await self._flush()  # what the last calls settled is not kept waiting
        watches = [asyncio.ensure_future(e.wait()) for e in (self.lease.successor_waiting, self.lease.lost)]
        try:
            await asyncio.wait(watches, timeout=min(self.policy.linger_poll, until - now))
        finally:
            for watch in watches:
                watch.cancel()
        self.seen_empty = dict.fromkeys(Lane, False)
        return True

    # -- taking and starting work -----------------------------------------------------------

    def _in_flight(self) -> int:
        """Calls started and not yet harvested."""
        return self.items.count(Stage.CALLING) + self.items.count(Stage.ANSWERED)

    def _idle(self) -> bool:
        return not (self._in_flight() or self.items.count(Stage.BUFFERED) or self.items.count(Stage.RETRYING))

    async def _refill(self) -> None:
        limit = self.policy.max_requests
        room = (
            self.policy.prefetch if limit is None else min(self.policy.prefetch, limit - self.summary.taken)
        )
        if room <= 0:
            self.seen_empty = dict.fromkeys(Lane, True)  # as far as this run may take, they are
            return
        # The priority lane is looked at every time round, and kept a window's worth ahead:
        # what is taken from it passes whatever the queue has buffered. The queue is taken from,
        # a prefetch at a time, when its own buffered items run low.
        buffered = self.items.in_stage(Stage.BUFFERED)
        urgent = sum(1 for i in buffered if i.taken.lane is Lane.PRIORITY)
        want = {Lane.PRIORITY: min(room, max(0, self.max_in_flight - urgent)), Lane.QUEUE: 0}
        if len(buffered) - urgent < self.max_in_flight and not (
            self.seen_empty[Lane.QUEUE] and not self._idle()
        ):
            want[Lane.QUEUE] = room
        now = _now()
        if (
            not want[Lane.QUEUE]
            and self.seen_empty[Lane.PRIORITY]
            and not self._idle()
            and now - self.priority_looked_at < self.policy.priority_poll
        ):
            # Except when it was found empty a moment ago, work is in hand and the queue is not
            # being taken from: a look of its own is a Redis round trip (about 0.1 ms of CPU) and
            # the loop comes round about once a request, while a priority request waits at most
            # `priority_poll` more for it. With nothing in hand, every look counts.
            want[Lane.PRIORITY] = 0
        if not any(want.values()):
            return
        # Only a run allowed a number of requests caps the two together.
        most = None if limit is None else room
        taken = await self.queue.take(want[Lane.QUEUE], priority=want[Lane.PRIORITY], most=most)
        if want[Lane.PRIORITY]:
            self.priority_looked_at = now
        items = [self.items.add(t) for t in taken]
        self.summary.taken += len(taken)
        if taken:
            self.idle_since = None
        got = {lane: sum(1 for t in taken if t.lane is lane) for lane in Lane}
        if most is not None:
            want[Lane.QUEUE] = min(want[Lane.QUEUE], most - got[Lane.PRIORITY])
        for lane in Lane:
            if want[lane]:
                self.seen_empty[lane] = got[lane] < want[lane]
        for item in items:
            if item.taken.error is not None:
                error = item.taken.error
                self.books.record(item, self.books.row(item, Outcome.FAILED, error.reason, error.detail))
        await self._fail_repeat_offenders([i for i in items if i.stage is Stage.BUFFERED])
        await self._skip_fresh(items)

    async def _skip_fresh(self, items: list[Item]) -> None:
        """Settle, without a call, requests whose snapshot the API would only repeat."""
        try:
            await self.gate.skip_fresh(items)
        except DatabaseUnavailable as exc:
            self.items.move_all([i for i in items if i.stage is Stage.BUFFERED], Stage.UNRECORDED)
            self.stopping.database_fault(exc)

    async def _fail_repeat_offenders(self, items: list[Item]) -> None:
        """Fail, without calling the API again, requests whose calls kept stopping runs."""
        if not items:
            return
        try:
            runs = await recovery.unexpected_errors(self.db, [i.taken.request_id for i in items])
        except DatabaseUnavailable as exc:
            self.items.move_all(items, Stage.UNRECORDED)  # never called: back as they are
            self.stopping.database_fault(exc)
            return
        limit = self.policy.unexpected_limit
        for item in items:
            count = runs.get(item.taken.request_id, 0)
            if count >= limit:
                detail = f"its API call stopped {count} runs with an unexpected error; not tried again"
                self.books.record(item, self.books.row(item, Outcome.FAILED, Reason.UNEXPECTED_ERROR, detail))

    async def _dispatch(self) -> None:
        now = _now()
        ready = sorted(
            (i for i in self.items.in_stage(Stage.RETRYING) if i.ready_at <= now), key=lambda i: i.seq
        )
        buffered = self.items.count(Stage.BUFFERED)
        available = len(ready) + buffered
        in_flight = self._in_flight()
        free = self.max_in_flight - in_flight
        if not available or free <= 0:
            return
        # Start calls in groups so `attempted` rows share a transaction, unless few are waiting.
        if free < min(self.dispatch_batch, available) and in_flight:
            return
        within = self.soft_deadline - now
        if within <= 0.2:
            return  # no call could finish before the deadline
        # Each lane in its order (its retries first), the priority lane first, the queue's share
        # kept; then the freshness gate holds a repeat of a tag whose call is in flight.
        waiting = ready + self.items.in_stage(Stage.BUFFERED)
        urgent = [i for i in waiting if i.taken.lane is Lane.PRIORITY]
        plain = [i for i in waiting if i.taken.lane is not Lane.PRIORITY]
        queue_waits = not self.seen_empty[Lane.QUEUE] or any(
            i.taken.lane is Lane.QUEUE for i in self.items.in_stage(Stage.RETRYING)
        )
        group = self.lanes.pick(urgent, plain, free, queue_waits=queue_waits)
        if not group:
            # The queue's turn, and none of its items at hand: take some at once (or, if all it
            # has is a retry, `_wait` sleeps until that is due).
            self._look_again = not self.seen_empty[Lane.QUEUE]
            return
        busy = self.items.in_stage(Stage.CALLING) + self.items.in_stage(Stage.ANSWERED)
        group = self.gate.hold_or_skip(group, calling=busy)
        if not group:
            return

        entries = [Entry((self.books.row(item, Outcome.ATTEMPTED),), owner=item) for item in group]
        written = await self.books.writer.write(entries)
        self.books.count(written.committed)
        for entry, why in written.refused:
            item = entry.owner
            detail = f"attempted row refused: {why}"
            self.books.record(item, self.books.row(item, Outcome.FAILED, Reason.UNSTORABLE, detail))
        if written.unavailable is not None:
            # Never called: back to the queue as they are, no row needed.
            self.items.move_all([e.owner for e in written.unwritten], Stage.UNRECORDED)
            self.stopping.database_fault(written.unavailable)
            return
        assert self.api is not None
        for entry in written.committed:
            item: Item = entry.owner
            item.tries += 1
            request = item.taken.request
            call = self.api.fetch(
                request.kind,
                request.tag,
                timeout=self.policy.call_timeout,
                within=within,
                priority=item.taken.lane is Lane.PRIORITY,
            )
            item.call = asyncio.create_task(call)
            item.call.add_done_callback(lambda _, item=item: self._answered(item))
            self.items.move(item, Stage.CALLING)

    def _answered(self, item: Item) -> None:
        """A call finished (its task's callback): its result waits in ANSWERED for the harvest."""
        if item.stage is not Stage.CALLING:
            return  # harvested already, after a gather that returned before this callback ran
        self.items.move(item, Stage.ANSWERED)
        # Wake the loop for a dispatch group's worth of results (or the last ones), not for
        # each: every wake-up costs CPU, and fewer than a group's free slots start nothing.
        # A fault wakes it at once: it may open the circuit; so does a priority call's result:
        # someone is waiting for it.
        task = item.call
        if (
            self.items.count(Stage.ANSWERED) >= min(self.dispatch_batch, self._in_flight())
            or item.taken.lane is Lane.PRIORITY
            or task.cancelled()
            or task.exception() is not None
        ):
            self._wake.set()

    async def _wait(self) -> None:
        if self.items.count(Stage.ANSWERED) or self._idle() or self._look_again:
            self._look_again = False
            return  # results to harvest, or nothing to wait for: go straight back to the queue
        until = self.soft_deadline
        if self.items.count(Stage.RECORDING):
            until = min(until, self.last_flush + self.policy.flush_interval)
        retrying = self.items.in_stage(Stage.RETRYING)
        if retrying:
            until = min(until, min(i.ready_at for i in retrying))
        self._wake.clear()
        try:
            async with asyncio.timeout(max(0.0, until - _now())):
                await self._wake.wait()
        except TimeoutError:
            pass

    # -- results ----------------------------------------------------------------------------

    def _harvest(self, *, every_finished: bool = False) -> None:
        """Give each answered call's item its next stage, in the order the answers came.

        `every_finished` also takes the calls that are done but whose callbacks have not run
        (after `gather`, which since Python 3.12 can return before the callbacks run)."""
        if every_finished:
            for item in self.items.in_stage(Stage.CALLING):
                if item.call.done():
                    self.items.move(item, Stage.ANSWERED)
        for item in self.items.in_stage(Stage.ANSWERED):
            task, item.call = item.call, None  # the result (a body) is not kept past here
            if task.cancelled():
                self.items.move(item, Stage.UNFINISHED)
                continue
            exc = task.exception()
            if exc is None:
                self._api_answered()
                self._fetched(item, task.result())
            elif isinstance(exc, RequestError):
                self._api_answered()
                row = self.books.row(
                    item, Outcome.FAILED, exc.reason, exc.detail, http_status=exc.http_status
                )
                self.books.record(item, row)
            elif isinstance(exc, TransientError):
                self._transient(item, exc)
            elif isinstance(exc, SystemicError):
                self.items.move(item, Stage.UNFINISHED)
                self.stopping.halt(StopCode.CIRCUIT_OPEN, exc.reason, exc.detail)
            elif isinstance(exc, Withheld):  # never sent: the run is handing over
                self.items.move(item, Stage.UNFINISHED)
            else:
                # Nobody planned for this. Stop, and blame this request, so that one which keeps
                # doing it is failed after a few runs instead of stopping every run.
                item.blame = Reason.UNEXPECTED_ERROR
                self.items.move(item, Stage.UNFINISHED)
                request = item.taken.request
                self.stopping.internal_error(exc, f" fetching {request.kind} {request.tag}")

    def _fetched(self, item: Item, fetched: Fetched) -> None:
        request = item.taken.request
        try:
            snapshot = snapshot_of(
                request.kind, request.tag, fetched.raw, fetched.fetched_at, fresh_until=fetched.fresh_until
            )
        except RequestError as exc:
            row = self.books.row(
                item, Outcome.FAILED, exc.reason, exc.detail, http_status=fetched.http_status
            )
            self.books.record(item, row)
            return
        row = self.books.row(
            item, Outcome.FETCHED, http_status=fetched.http_status, latency_ms=fetched.latency_ms
        )
        self.books.record(item, row, snapshot)
        self.gate.note(request.kind, request.tag, fetched.fresh_until)

    # -- the API's health: the streak of transient errors -------------------------------------

    def _api_down(self) -> bool:
        """The one definition of "the API is down": an open circuit, or as many different
        requests in a row as `transient_streak` met transient errors since it last answered."""
        return self.stopping.is_(StopCode.CIRCUIT_OPEN) or len(self.streak) >= self.policy.transient_streak

    def _api_answered(self) -> None:
        # The API is up: whoever ran out of tries failed on its own account.
        self.streak.clear()
        self._close_parked()

    def _transient(self, item: Item, exc: TransientError) -> None:
        self.streak.add(item.taken.request_id)
        if self._api_down():
            self.items.move(item, Stage.UNFINISHED)
            detail = f"{len(self.streak)} requests in a row met {exc.reason}: {exc.detail}"
            self.stopping.halt(StopCode.CIRCUIT_OPEN, Reason.API_DOWN, detail)
        elif item.tries < self.policy.max_tries:
            item.ready_at = _now() + self.policy.retry_backoff * 2 ** (item.tries - 1)
            self.items.move(item, Stage.RETRYING)
        else:
            item.last_error = exc
            self.items.move(item, Stage.PARKED)

    def _close_parked(self) -> None:
        """Give the requests that ran out of tries their verdict: `failed`, unless the API is down
        (then they close with the run, deferred)."""
        parked = self.items.in_stage(Stage.PARKED)
        if not parked:
            return
        api_down = self._api_down()
        for item in parked:
            if api_down:
                self.items.move(item, Stage.UNFINISHED)
            else:
                exc = item.last_error
                row = self.books.row(
                    item, Outcome.FAILED, exc.reason, exc.detail, http_status=exc.http_status
                )
                self.books.record(item, row)
        if api_down and not self.stopped:
            detail = f"{len(self.streak)} requests in a row failed transiently"
            self.stopping.halt(StopCode.CIRCUIT_OPEN, Reason.API_DOWN, detail)

    # -- winding down -------------------------------------------------------------------------

    async def _flush(self, *, run_summary: SummaryOrMaker | None = None) -> Written | None:
        self.last_flush = _now()
        return await self.books.flush(run_summary=run_summary)

    async def _finish(self) -> None:
        """Stop every call, write the last rows and the summary, put the unfinished back in order.

        Whatever cannot be done is left for the next run. Raises only for cancellation, and,
        with the checks on, for items no fault explains losing track of (`AccountingError`).
        """
        try:
            calls = [item.call for item in self.items.in_stage(Stage.CALLING)]
            if self.stopping.is_(StopCode.HANDED_OVER):
                # Start nothing more; let what the API already has finish (within the deadline),
                # so that the successor repeats no call.
                self.drain.limiter.withhold()
                if calls:
                    await asyncio.wait(calls, timeout=max(0.0, self.soft_deadline - _now()))
            for task in calls:
                task.cancel()
            if calls:
                await asyncio.gather(*calls, return_exceptions=True)
            self._harvest(every_finished=True)  # calls that completed before the cancel keep their results
            self._close_parked()
            stop = self.stopping.final
            outcome, reason = stop.closing()
            leftover = sorted(
                self.items.in_stage(Stage.UNFINISHED)
                + self.items.in_stage(Stage.RETRYING)
                + self.items.in_stage(Stage.BUFFERED),
                key=lambda i: i.seq,
            )
            for item in leftover:
                self.books.record(item, self.books.row(item, outcome, item.blame or reason, stop.detail))
            if self.stopping.database_lost:
                # Postgres went away during the run: what is left cannot be recorded either, and
                # trying would cost the pool's timeout, which the deadline may not have left.
                self.items.move_all(self.items.in_stage(Stage.RECORDING), Stage.UNRECORDED)
            else:
                # The summary goes in the last batch's transaction, counting that batch's rows as
                # written (a fetch's `changed` is known only once its snapshot is upserted).
                written = await self._flush(run_summary=lambda rows: self._summary_dict(pending=rows))
                if not written.summary_written and not self.stopping.database_lost:
                    await self.books.writer.write_summary(self._summary_dict())
        except DatabaseUnavailable as exc:
            self.stopping.database_fault(exc)
        except RedisError as exc:
            self.stopping.redis_fault(exc)
        except Exception as exc:  # a bug in the finish itself: leave the rest to recovery
            self.stopping.internal_error(exc)
        await self.books.put_back_unrecorded(checks=self.policy.checks)
        if self.stopping.database_lost:
            await self._stash_summary()

    async def _stash_summary(self) -> None:
        """Postgres was lost: keep the summary in Redis for the next run to record. It proves
        this run lived, so what it left in flight is not counted as interrupted."""
        try:
            await self.queue.stash_summary(orjson.dumps(self._summary_dict()))
        except RedisError:
            log.warning("could not stash the run summary in Redis either", exc_info=True)

    def _summary_dict(self, *, pending: Sequence[LedgerRow] = ()) -> dict[str, Any]:
        """The summary as stored: counts of committed rows, plus those of `pending` (the rows
        committed with it)."""
        changes = {kind: dict(c) for kind, c in self.summary.fetch_changes.items()}
        summary = self._fill(
            RunSummary(
                **{**self.summary.__dict__, "counts": dict(self.summary.counts), "fetch_changes": changes}
            )
        )
        for row in pending:
            summary.counts[row.outcome] = summary.counts.get(row.outcome, 0) + 1
            if row.changed is not None and row.kind is not None:
                change = summary.fetch_changes.setdefault(row.kind, {"fetched": 0, "changed": 0})
                change["fetched"] += 1
                change["changed"] += row.changed
        return summary.as_dict()

    def _fill(self, summary: RunSummary) -> RunSummary:
        stop = self.stopping.final
        summary.stopped, summary.cause, summary.detail = stop.code, stop.cause, stop.detail
        summary.error = self.stopping.error
        summary.finished_at = time.time()
        summary.api_requests = self.drain.limiter.granted - self.granted_at_start
        summary.items = self.items.final_counts()
        return summary

    async def _summarise(self) -> RunSummary:
        summary = self._fill(self.summary)
        try:
            sizes = await self.queue.sizes()
            summary.queue_size, summary.priority_queue_size = sizes.queued, sizes.priority
            summary.inflight_size = sizes.inflight
        except Exception:  # the summary is still worth returning without the sizes
            log.warning("could not read the queue length", exc_info=True)
        return summary
