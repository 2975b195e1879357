"""The drain: take refresh requests, call the API at the rate limit, record every outcome.

One run, in order:

1. take the Redis lease (another drainer holds it: return `lease_held`, touch nothing);
2. check Postgres (down: dequeue nothing) and log in to the API (refused: dequeue nothing);
3. recover the in-flight list a dead run left behind;
4. loop: prefetch items with LMOVE, write `attempted` rows for a group of calls and
   start them, harvest results, write terminal rows and snapshots in batches (one
   transaction each) and acknowledge what they settled;
5. stop on an empty queue, the deadline, an open circuit, a lost lease or cancellation;
   put whatever is unfinished back at the head of the queue in its original order with a
   `skipped-deadline` or `deferred` row, and record the run's summary.

Request faults become `failed` rows and the run goes on. Timeouts and 5xx are tried
again (a bounded number of times) and only then `failed`; when several different
requests meet them in a row, or any systemic fault arrives, the circuit opens.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from coclib.coc_api import CocApi, Fetched
from coclib.db import Database
from coclib.errors import DatabaseUnavailable, RequestError, SystemicError, TransientError
from coclib.lease import Lease
from coclib.queue import RefreshQueue, Taken
from coclib.ratelimit import RateLimiter
from coclib.snapshots import Snapshot
from coclib.sqlfiles import load_queries
from ledger.outcomes import REASON_DEADLINE, REASON_INTERRUPTED, LedgerRow, Outcome
from ledger.partitions import ensure_partitions
from ledger.writer import LedgerWriter, row_dict

log = logging.getLogger(__name__)

# Why a run stopped (`RunSummary.stopped`).
QUEUE_EMPTY = "queue_empty"
MAX_REQUESTS = "max_requests"
DEADLINE = "deadline"
CIRCUIT_OPEN = "circuit_open"
LEASE_HELD = "lease_held"
LEASE_LOST = "lease_lost"
CANCELLED = "cancelled"


@dataclass(frozen=True)
class DrainPolicy:
    """The drain's knobs. The defaults suit 10-30 requests/s and 100-300 ms API latency."""

    max_in_flight: int = 32  # calls started and not finished, at most (less at lower rates)
    dispatch_batch: int = 8  # start calls in groups: one `attempted` transaction per group
    prefetch: int = 64  # items moved to the in-flight list per take
    flush_rows: int = 64  # terminal rows per transaction…
    flush_interval: float = 0.5  # …or at least this often (seconds)
    call_timeout: float = 10.0  # one API call from when the limiter lets it go
    max_tries: int = 3  # per request per run, for timeouts and 5xx
    retry_backoff: float = 0.5  # seconds before the first transient retry; doubles
    transient_streak: int = 5  # different requests failing transiently in a row: API down
    finish_reserve: float = 1.0  # seconds before the deadline kept for the last writes
    max_requests: int | None = None  # take at most this many items (POST /refresh)
    interrupted_limit: int = 2  # a request found interrupted this many times is `failed`


@dataclass
class RunSummary:
    """What a run did, as returned by the handler and stored in `refresh_run_summaries`."""

    run_id: str
    started_at: float
    stopped: str = QUEUE_EMPTY
    cause: str | None = None
    finished_at: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    taken: int = 0
    recovered: dict[str, int] = field(default_factory=dict)
    api_requests: int = 0
    queue_size: int | None = None
    inflight_size: int | None = None

    @property
    def duration_s(self) -> float:
        return max(0.0, self.finished_at - self.started_at)

    @property
    def processed_requests(self) -> int:
        """Requests settled in this run: fetched plus failed."""
        return self.counts.get(Outcome.FETCHED, 0) + self.counts.get(Outcome.FAILED, 0)

    def as_dict(self) -> dict[str, Any]:
        duration = self.duration_s
        return {
            "run_id": self.run_id,
            "stopped": self.stopped,
            "cause": self.cause,
            "started_at": round(self.started_at, 3),
            "finished_at": round(self.finished_at, 3),
            "duration_s": round(duration, 3),
            "counts": {str(k): v for k, v in self.counts.items()},
            "processed_requests": self.processed_requests,
            "taken": self.taken,
            "recovered": self.recovered,
            "queue_size": self.queue_size,
            "inflight_size": self.inflight_size,
            "api_requests": self.api_requests,
            "api_requests_per_second": round(self.api_requests / duration, 2) if duration > 0 else 0.0,
        }


@dataclass(slots=True)
class _Work:
    taken: Taken
    tries: int = 0
    ready_at: float = 0.0

    @property
    def request(self):  # always set: malformed items never become work
        return self.taken.request


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
        clock: Callable[[], float] = time.monotonic,
        on_progress: Callable[[Counter[str]], None] | None = None,
    ) -> None:
        self.queue = queue
        self.db = db
        self.connect_api = connect_api
        self.limiter = limiter
        self.policy = policy or DrainPolicy()
        self.clock = clock
        self.on_progress = on_progress

    async def run(self, deadline: float, *, policy: DrainPolicy | None = None) -> RunSummary:
        """Drain until the queue is empty or `deadline` (a `clock()` value) draws near."""
        run = _Run(self, deadline, policy or self.policy)
        return await run.execute()


class _Run:
    """The state of one run. Everything here lives and dies with it."""

    def __init__(self, drain: Drain, deadline: float, policy: DrainPolicy) -> None:
        self.d = drain
        self.policy = policy
        self.clock = drain.clock
        self.soft_deadline = deadline - policy.finish_reserve
        self.run_id = uuid.uuid4()
        self.summary = RunSummary(run_id=str(self.run_id), started_at=time.time())
        self.writer = LedgerWriter(drain.db, self.run_id)
        self.lease = Lease(drain.queue.redis, drain.queue.keys.lease)
        self.api: CocApi | None = None
        self.granted_at_start = drain.limiter.granted
        # Enough calls in flight to keep the limiter busy through 500 ms of API latency, in
        # groups, but no more: a call waiting in the limiter has its `attempted` row already.
        rate = drain.limiter.rate
        self.dispatch_batch = min(policy.dispatch_batch, max(1, math.ceil(rate / 4)))
        self.max_in_flight = min(policy.max_in_flight, math.ceil(rate / 2) + 2 * self.dispatch_batch)

        self.buffer: deque[_Work] = deque()  # prefetched, not started
        self.retries: list[_Work] = []  # met a timeout or 5xx; start again at ready_at
        self.parked: list[tuple[_Work, TransientError]] = []  # out of tries, verdict pending
        self.in_flight: dict[asyncio.Task[Fetched], _Work] = {}
        self.unfinished: list[_Work] = []  # to be deferred or skipped at the end
        self.unrecorded: list[Taken] = []  # Postgres lost them: back to the queue, no row
        # Settled in a batch whose commit failed: it may have landed (the connection can die
        # after COMMIT reached the server). They stay in the in-flight list, unacknowledged,
        # for the next run's recovery to settle or requeue by what the ledger says.
        self.in_doubt: list[Taken] = []

        self.rows: list[LedgerRow] = []  # terminal rows not yet committed…
        self.snapshots: list[Snapshot] = []  # …with their snapshots…
        self.settled: list[Taken] = []  # …and the items they acknowledge
        self.last_flush = self.clock()

        self.streak: set[str] = set()  # requests that met a transient error since the API last answered
        self.queue_seen_empty = False
        self.stop: str | None = None
        self.cause: str | None = None
        self._done: deque[asyncio.Task[Fetched]] = deque()
        self._wake = asyncio.Event()

    # -- the run --------------------------------------------------------------

    async def execute(self) -> RunSummary:
        if not await self.lease.acquire():
            log.info("another drain holds the lease; not draining")
            return await self._summarise(LEASE_HELD, "another drain is running")
        try:
            database_up = await self._prepare()
            if self.stop is None:
                await self._recover()
            try:
                if self.stop is None:
                    await self._loop()
            except asyncio.CancelledError:
                self._halt(CANCELLED, "the run was cancelled")
                # The final writes must happen even though we were cancelled.
                await asyncio.shield(self._finish())
                raise
            except RedisError as exc:
                # Finishing may work (the outage may be brief); if not, what we took stays
                # in the in-flight list for the next run to recover.
                self._halt(CIRCUIT_OPEN, f"redis_unavailable: {type(exc).__name__}")
            if database_up:
                await self._finish()
        finally:
            await self.lease.release()
        return await self._summarise(self.stop or QUEUE_EMPTY, self.cause)

    async def _prepare(self) -> bool:
        """Check Postgres and log in to the API; halt (taking nothing) if either fails.

        Returns whether Postgres answered, i.e. whether the run can record its summary.
        """
        try:
            await self.d.db.fetch_one(load_queries()["ping"])
        except DatabaseUnavailable as exc:
            self._halt(CIRCUIT_OPEN, f"database_unavailable: {exc.detail}")
            return False
        await ensure_partitions(self.d.db)  # never raises: the default partition catches rows
        try:
            self.api = await self.d.connect_api()
        except SystemicError as exc:
            self._halt(CIRCUIT_OPEN, f"{exc.cause}: {exc.detail}")
        return True

    async def _loop(self) -> None:
        while self.stop is None:
            if self.clock() >= self.soft_deadline:
                self._halt(DEADLINE, "the deadline buffer was reached")
                break
            if self.lease.lost.is_set():
                self._halt(LEASE_LOST, "the drain lease expired or was taken over")
                break
            self._harvest()
            if self.stop is None:
                await self._refill()
            if self.stop is None:
                await self._dispatch()
            if self.stop is None and self._idle():
                if not self.queue_seen_empty:
                    continue  # look at the queue once more before calling it empty
                self._close_parked(api_down=len(self.streak) > 1)
                if self._idle() and self.stop is None:
                    full = (
                        self.policy.max_requests is not None
                        and self.summary.taken >= self.policy.max_requests
                    )
                    self._halt(MAX_REQUESTS if full else QUEUE_EMPTY, None)
                    break
            if self.rows and (
                len(self.rows) >= self.policy.flush_rows
                or self.clock() - self.last_flush >= self.policy.flush_interval
            ):
                await self._flush()
            if self.stop is None:
                await self._wait()

    # -- taking and starting work -----------------------------------------------

    def _idle(self) -> bool:
        return not (self.in_flight or self.buffer or self.retries)

    async def _refill(self) -> None:
        limit = self.policy.max_requests
        room = (
            self.policy.prefetch if limit is None else min(self.policy.prefetch, limit - self.summary.taken)
        )
        if room <= 0:
            self.queue_seen_empty = True  # as far as this run may take, it is
            return
        low = len(self.buffer) < self.max_in_flight
        if not low or (self.queue_seen_empty and not self._idle()):
            return
        taken = await self.d.queue.take(room)
        self.summary.taken += len(taken)
        self.queue_seen_empty = len(taken) < room
        for item in taken:
            if item.error is not None:
                self._settle(item, Outcome.FAILED, item.error.reason, item.error.detail)
            else:
                self.buffer.append(_Work(item))

    async def _dispatch(self) -> None:
        now = self.clock()
        ready = sorted((w for w in self.retries if w.ready_at <= now), key=lambda w: w.taken.seq)
        available = len(ready) + len(self.buffer)
        free = self.max_in_flight - len(self.in_flight)
        if not available or free <= 0:
            return
        # Start calls in groups so `attempted` rows share a transaction, unless few are waiting.
        if free < min(self.dispatch_batch, available) and self.in_flight:
            return
        within = self.soft_deadline - now
        if within <= 0.2:
            return  # no call could finish before the deadline
        group = ready[:free]
        for work in group:
            self.retries.remove(work)
        while len(group) < free and self.buffer:
            group.append(self.buffer.popleft())

        attempted = [
            LedgerRow(w.taken.request_id, Outcome.ATTEMPTED, w.request.kind, w.request.tag) for w in group
        ]
        try:
            await self.writer.append(attempted)
        except DatabaseUnavailable as exc:
            self.unrecorded.extend(w.taken for w in group)
            self._halt(CIRCUIT_OPEN, f"database_unavailable: {exc.detail}")
            return
        self._count(attempted)
        assert self.api is not None
        for work in group:
            work.tries += 1
            call = self.api.fetch(
                work.request.kind, work.request.tag, timeout=self.policy.call_timeout, within=within
            )
            task = asyncio.create_task(call)
            task.add_done_callback(self._on_done)
            self.in_flight[task] = work

    def _on_done(self, task: asyncio.Task[Fetched]) -> None:
        self._done.append(task)
        # Wake the loop for a dispatch group's worth of results (or the last ones), not for
        # each: every wake-up costs CPU, and fewer than a group's free slots start nothing.
        # A fault wakes it at once: it may open the circuit.
        if (
            len(self._done) >= min(self.dispatch_batch, len(self.in_flight))
            or task.cancelled()
            or task.exception() is not None
        ):
            self._wake.set()

    async def _wait(self) -> None:
        if self._done:
            return
        now = self.clock()
        until = self.soft_deadline
        if self.rows:
            until = min(until, self.last_flush + self.policy.flush_interval)
        if self.retries:
            until = min(until, min(w.ready_at for w in self.retries))
        if self._idle():
            return  # nothing to wait for: go straight back to the queue
        self._wake.clear()
        try:
            async with asyncio.timeout(max(0.0, until - now)):
                await self._wake.wait()
        except TimeoutError:
            pass

    # -- results -------------------------------------------------------------------

    def _harvest(self) -> None:
        while self._done:
            task = self._done.popleft()
            work = self.in_flight.pop(task)
            if task.cancelled():
                self.unfinished.append(work)
                continue
            exc = task.exception()
            if exc is None:
                self._api_answered()
                fetched = task.result()
                request = work.request
                self.snapshots.append(Snapshot(request.kind, request.tag, fetched.data, fetched.fetched_at))
                self._settle(
                    work.taken,
                    Outcome.FETCHED,
                    http_status=fetched.http_status,
                    latency_ms=fetched.latency_ms,
                )
            elif isinstance(exc, RequestError):
                self._api_answered()
                self._settle(work.taken, Outcome.FAILED, exc.reason, exc.detail, http_status=exc.http_status)
            elif isinstance(exc, TransientError):
                self._transient(work, exc)
            elif isinstance(exc, SystemicError):
                self.unfinished.append(work)
                self._halt(CIRCUIT_OPEN, f"{exc.cause}: {exc.detail}")
            else:
                # A bug must not lose the request: defer it and stop, loudly.
                log.error(
                    "unexpected error fetching %s %s", work.request.kind, work.request.tag, exc_info=exc
                )
                self.unfinished.append(work)
                self._halt(CIRCUIT_OPEN, f"internal_error: {type(exc).__name__}")

    def _api_answered(self) -> None:
        # The API is up: whoever ran out of tries failed on its own account.
        self.streak.clear()
        self._close_parked(api_down=False)

    def _transient(self, work: _Work, exc: TransientError) -> None:
        self.streak.add(work.taken.request_id)
        if len(self.streak) >= self.policy.transient_streak:
            self.unfinished.append(work)
            self._halt(CIRCUIT_OPEN, f"upstream: {len(self.streak)} requests in a row met {exc.reason}")
        elif work.tries < self.policy.max_tries:
            work.ready_at = self.clock() + self.policy.retry_backoff * 2 ** (work.tries - 1)
            self.retries.append(work)
        else:
            self.parked.append((work, exc))

    def _close_parked(self, *, api_down: bool) -> None:
        """Give the requests that ran out of tries their verdict."""
        parked, self.parked = self.parked, []
        for work, exc in parked:
            if api_down:
                self.unfinished.append(work)
            else:
                self._settle(work.taken, Outcome.FAILED, exc.reason, exc.detail, http_status=exc.http_status)
        if parked and api_down and self.stop is None:
            self._halt(CIRCUIT_OPEN, f"upstream: {len(self.streak)} requests in a row failed transiently")

    def _settle(
        self,
        taken: Taken,
        outcome: Outcome,
        reason: str | None = None,
        detail: str | None = None,
        *,
        http_status: int | None = None,
        latency_ms: int | None = None,
    ) -> None:
        request = taken.request
        self.rows.append(
            LedgerRow(
                taken.request_id,
                outcome,
                request.kind if request else None,
                request.tag if request else None,
                reason,
                detail,
                http_status,
                latency_ms,
            )
        )
        self.settled.append(taken)

    def _halt(self, stop: str, cause: str | None) -> None:
        if self.stop is None:
            self.stop, self.cause = stop, cause
            log.log(
                logging.INFO if stop in (QUEUE_EMPTY, MAX_REQUESTS) else logging.WARNING,
                "drain stopping: %s%s",
                stop,
                f" ({cause})" if cause else "",
            )

    # -- writing ---------------------------------------------------------------------

    async def _flush(self) -> None:
        rows, snapshots, settled = self.rows, self.snapshots, self.settled
        self.rows, self.snapshots, self.settled = [], [], []
        self.last_flush = self.clock()
        try:
            await self.writer.append(rows, snapshots)
        except DatabaseUnavailable as exc:
            # Nothing of this batch may be acknowledged, nor put back: it may have committed.
            self.in_doubt.extend(settled)
            self._halt(CIRCUIT_OPEN, f"database_unavailable: {exc.detail}")
            return
        self._count(rows)
        await self.d.queue.ack(settled)

    def _count(self, rows: list[LedgerRow]) -> None:
        counts = self.summary.counts
        for row in rows:
            counts[row.outcome] = counts.get(row.outcome, 0) + 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("outcome", extra={"ledger": row_dict(row), "run_id": self.summary.run_id})
        if self.d.on_progress is not None:
            self.d.on_progress(Counter(counts))

    async def _finish(self) -> None:
        """Stop every call, write the last rows, and put the unfinished back in order."""
        for task in self.in_flight:
            task.cancel()
        if self.in_flight:
            await asyncio.gather(*self.in_flight, return_exceptions=True)
        self._harvest()  # calls that completed before the cancel keep their results
        self._close_parked(api_down=self.stop == CIRCUIT_OPEN or len(self.streak) > 1)
        leftover = [*self.unfinished, *self.retries, *self.buffer]
        self.unfinished, self.retries = [], []
        self.buffer.clear()

        if self.stop == CIRCUIT_OPEN or self.stop == LEASE_LOST:
            outcome, reason = Outcome.DEFERRED, (self.cause or self.stop).split(":")[0]
        else:
            outcome, reason = (
                Outcome.SKIPPED_DEADLINE,
                REASON_DEADLINE if self.stop == DEADLINE else self.stop,
            )
        closing = [
            LedgerRow(w.taken.request_id, outcome, w.request.kind, w.request.tag, reason, self.cause)
            for w in leftover
        ]
        rows, snapshots, settled = [*self.rows, *closing], self.snapshots, self.settled
        self.rows, self.snapshots, self.settled = [], [], []
        put_back = [w.taken for w in leftover]
        if not self.unrecorded and not self.in_doubt:
            summary = self._summary_with(rows)
            try:
                await self.writer.append(rows, snapshots, run_summary=summary)
            except DatabaseUnavailable as exc:
                self.in_doubt.extend(settled)  # left in the in-flight list for recovery
                settled = []
                self.stop, self.cause = CIRCUIT_OPEN, f"database_unavailable: {exc.detail}"
            else:
                self._count(rows)
        else:
            # Postgres is gone: nothing more can be recorded, so everything taken goes back
            # (these rows were never sent), except the batch in doubt.
            self.unrecorded.extend(settled)
            settled = []
        await self.d.queue.ack(settled)
        await self.d.queue.put_back([*put_back, *self.unrecorded])

    def _summary_with(self, rows: list[LedgerRow]) -> dict[str, Any]:
        counts = dict(self.summary.counts)
        for row in rows:
            counts[row.outcome] = counts.get(row.outcome, 0) + 1
        summary = RunSummary(**{**self.summary.__dict__, "counts": counts})
        summary.stopped, summary.cause = self.stop or QUEUE_EMPTY, self.cause
        summary.finished_at = time.time()
        summary.api_requests = self.d.limiter.granted - self.granted_at_start
        return summary.as_dict()

    async def _summarise(self, stopped: str, cause: str | None) -> RunSummary:
        s = self.summary
        s.stopped, s.cause = stopped, cause
        s.finished_at = time.time()
        s.api_requests = self.d.limiter.granted - self.granted_at_start
        try:
            s.queue_size, s.inflight_size = await self.d.queue.sizes()
        except Exception:  # the summary is still worth returning without the sizes
            log.warning("could not read the queue length", exc_info=True)
        return s

    # -- crash recovery --------------------------------------------------------------

    async def _recover(self) -> None:
        """Settle or requeue what a dead run left in the in-flight list.

        Anything there now belongs to a run that died: we hold the lease. A request with a
        settling row is done; one a run attempted and abandoned `interrupted_limit` times
        is `failed`; the rest go back to the head of the queue, in order.
        """
        items = await self.d.queue.inflight()
        if not items:
            return
        ids = [t.request_id for t in items]
        queries = load_queries()
        try:
            done = {
                r["request_id"] for r in await self.d.db.fetch_all(queries["settled_requests"], {"ids": ids})
            }
            interrupted = {
                r["request_id"]: r["interrupted"]
                for r in await self.d.db.fetch_all(queries["interruptions"], {"ids": ids})
            }
        except DatabaseUnavailable as exc:
            self._halt(CIRCUIT_OPEN, f"database_unavailable: {exc.detail}")
            return
        stats = Counter()
        rows: list[LedgerRow] = []
        settled: list[Taken] = []
        requeue: list[Taken] = []
        for item in items:
            if item.request_id in done:
                settled.append(item)
                stats["already_settled"] += 1
            elif item.error is not None:
                rows.append(
                    LedgerRow(
                        item.request_id, Outcome.FAILED, reason=item.error.reason, detail=item.error.detail
                    )
                )
                settled.append(item)
                stats["failed"] += 1
            elif interrupted.get(item.request_id, 0) >= self.policy.interrupted_limit:
                r = item.request
                detail = f"interrupted in {interrupted[item.request_id]} runs"
                rows.append(
                    LedgerRow(item.request_id, Outcome.FAILED, r.kind, r.tag, REASON_INTERRUPTED, detail)
                )
                settled.append(item)
                stats["failed"] += 1
            else:
                requeue.append(item)
                stats["requeued"] += 1
        try:
            await self.writer.append(rows)
        except DatabaseUnavailable as exc:
            self._halt(CIRCUIT_OPEN, f"database_unavailable: {exc.detail}")
            return
        self._count(rows)
        await self.d.queue.ack(settled)
        await self.d.queue.put_back(requeue)
        self.summary.recovered = dict(stats)
        log.warning("recovered %d in-flight items from a dead run: %s", len(items), dict(stats))
