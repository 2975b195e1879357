"""The drain as a hypothesis state machine against real Postgres, Redis and the simulator.

Each example gets a fresh database (a copy of the session's migrated template), its own
Redis queue key (its own `{hash tag}`, so no other test's items can mix in) and an empty
simulator call log. Between steps the machine pushes requests (valid, 404 tags, private
war logs, malformed payloads) to either lane (the queue or the priority lane), flips faults
(latency, tags going missing, maintenance, a revoked key, server errors) and runs drains: to
completion, with a short deadline, cancelled part-way, or against a dead Postgres.

The drains of one example share one `RateLimiter` and one API client, as the runs of a warm
Lambda container do; each run is a new `Drain.run()` (its own run id and lease).

After every step (`invariants.py` has the details):
  * conservation: every request is queued, in flight, or settled exactly once; nothing is
    duplicated; a finished run leaves the in-flight list empty, unless it lost its lease (its
    changes to the in-flight list are fenced on the lease: what it held waits there for the
    next run's recovery);
  * per request and run at most one terminal row, nothing after a settling row (so a
    `failed` request is never attempted again), every request a finished run attempted has
    its terminal row; the ledger only grows and old rows never change;
  * the API saw a call only after its `attempted` row, never after the request settled,
    never for a malformed item; never more than COC_REQS_PER_SEC calls in a 1-second window;
  * outcomes fit the request and the API's answers; snapshots hold the API's body and a
    `fetched_at` between the attempt and the `fetched` row.
After every drain: each lane is exactly the old in-flight list's items of that lane plus the
old lane, minus what is now settled (and minus what a cancelled run left in flight), in the same
order; first attempts in the run follow each lane's order; while the queue has work, at most
eight priority calls in a row pass it (`worker.lanes`); its summary agrees with the ledger; a maintenance
window, a revoked key and a dead Postgres fail nothing that needed the API (a dead Postgres
changes nothing at all). At the end of each example every fault is switched off, drains run
until the queue is empty, and every request must have ended `fetched` or `failed` exactly once.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from types import SimpleNamespace

import psycopg
import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from coclib import queue as queue_scripts
from coclib.coc_api import CocApi
from coclib.db import Database
from coclib.keys import QueueKeys
from coclib.queue import RefreshQueue
from coclib.ratelimit import RateLimiter
from coclib.testing.services import create_database, drop_database
from coclib.testing.simulator import max_calls_in_window
from tests.conftest import TEST_TOKEN
from tests.helpers import RecordingLimiter
from tests.invariants import (
    KINDS,
    MALFORMED,
    OFFLINE_REASONS,
    Ledger,
    RequestFactory,
    check_calls,
    check_conservation,
    check_lane_share,
    check_outcomes,
    check_request_histories,
    check_run_order,
    check_summary,
    expected_lanes_after,
    raw_id,
    read_world,
    run_rows,
)
from tests.proxies import PostgresProxy, RedisCommandCutter, RedisProxy
from worker.drain import Drain, DrainPolicy, StopCode

CIRCUIT_OPEN, DEADLINE, QUEUE_EMPTY = StopCode.CIRCUIT_OPEN, StopCode.DEADLINE, StopCode.QUEUE_EMPTY
LEASE_LOST = StopCode.LEASE_LOST

RATE = 20  # COC_REQS_PER_SEC for these drains
DEAD_POSTGRES = "postgresql://postgres@127.0.0.1:1/nowhere"
_databases = itertools.count()

policies = st.builds(
    DrainPolicy,
    max_in_flight=st.integers(1, 16),
    dispatch_batch=st.integers(1, 8),
    prefetch=st.integers(1, 24),
    flush_rows=st.integers(1, 32),
    flush_interval=st.sampled_from([0.05, 0.2, 0.5]),
    call_timeout=st.just(3.0),
    max_tries=st.integers(1, 3),
    retry_backoff=st.just(0.02),
    transient_streak=st.integers(2, 5),
    finish_reserve=st.just(0.1),
    interrupted_limit=st.integers(1, 3),
    unexpected_limit=st.integers(1, 3),
    checks=st.just(True),  # the tracker's books, after every step of every run
)


class FaultyApi:
    """The API client, with a bug: processing a broken tag's answer raises (after the real call)."""

    def __init__(self, api: CocApi, broken: set[str]) -> None:
        self.api, self.broken = api, broken

    async def fetch(self, kind: str, tag: str, **kwargs):
        fetched = await self.api.fetch(kind, tag, **kwargs)
        if tag in self.broken:
            raise RuntimeError(f"injected: a bug processing {tag}")
        return fetched


# (category, kind, option): option is how a request is spelled, or which malformed payload.
request_specs = st.one_of(
    st.tuples(st.just("valid"), st.sampled_from(KINDS), st.sampled_from(["id", "no_id", "lower_case"])),
    st.tuples(st.just("not_found"), st.sampled_from(KINDS), st.just("id")),
    st.tuples(st.just("private"), st.just("war"), st.just("id")),
    st.tuples(st.just("malformed"), st.none(), st.sampled_from(sorted(MALFORMED))),
)


class DrainMachine(RuleBasedStateMachine):
    # Set by the test function from its fixtures.
    admin_url: str
    template: str
    redis_url: str
    sim = None

    def __init__(self) -> None:
        super().__init__()
        self.db_name = f"coc_prop_{os.getpid()}_{next(_databases)}"
        self.db_url = create_database(self.admin_url, self.db_name, template=self.template)
        self.keys = QueueKeys(f"{{coc:prop:{uuid.uuid4().hex[:12]}}}:queue")
        self.redis = redis.Redis.from_url(self.redis_url)
        self.factory = RequestFactory()
        self.items: dict[str, object] = {}
        self.priority: set[str] = set()  # ids of the requests pushed to the priority lane
        self.ledger = Ledger()
        self.finished_runs: set[str] = set()
        self.inflight_allowed = False
        self.missing: set[str] = set()  # valid tags the API now answers 404 for
        self.broken: set[str] = set()  # tags whose answers the worker now fails to process
        self.ever_broken: set[str] = set()
        self.policy = DrainPolicy(checks=True)
        sim = self.sim
        sim.reset_faults()
        sim.latency = (0.0, 0.0)
        sim.rate_limit = None
        sim.tokens.clear()
        sim.tokens.add(TEST_TOKEN)
        sim.clear_calls()
        self.limiter = RecordingLimiter(RATE)
        self.limiters = [self.limiter]  # and those of other containers: the rate holds for all
        self.runner = asyncio.Runner()
        self.aredis: aioredis.Redis | None = None
        self.queue: RefreshQueue | None = None
        self.db: Database | None = None
        self.api: CocApi | None = None
        self.clean = True  # false once a step raised: teardown then only cleans up
        self.other_apis: list[CocApi] = []

    # -- plumbing ------------------------------------------------------------------------

    async def _open(self) -> None:
        if self.aredis is None:
            self.aredis = aioredis.Redis.from_url(self.redis_url)
            self.queue = RefreshQueue(self.aredis, self.keys)
            self.db = await Database.open(self.db_url)

    async def _connect_api(self) -> FaultyApi:
        if self.api is None:
            self.api = await CocApi.connect(
                base_url=self.sim.base_url, limiter=self.limiter, tokens=(TEST_TOKEN,), max_in_flight=64
            )
        return FaultyApi(self.api, self.broken)

    async def _other_container(self) -> Drain:
        """A second drain as another Lambda container has it: its own limiter and API client."""
        limiter = RecordingLimiter(RATE)
        self.limiters.append(limiter)
        api = await CocApi.connect(base_url=self.sim.base_url, limiter=limiter, tokens=(TEST_TOKEN,))
        self.other_apis.append(api)

        async def connect() -> FaultyApi:
            return FaultyApi(api, self.broken)

        return Drain(queue=self.queue, db=self.db, connect_api=connect, limiter=limiter, policy=self.policy)

    async def _run(
        self,
        seconds: float,
        *,
        db: Database | None = None,
        queue: RefreshQueue | None = None,
        cancel_after: float | None = None,
        scheduled: bool = False,
        meanwhile=None,
    ):
        await self._open()
        drain = Drain(
            queue=queue or self.queue,
            db=db or self.db,
            connect_api=self._connect_api,
            limiter=self.limiter,
            policy=self.policy,
        )
        task = asyncio.ensure_future(drain.run(time.monotonic() + seconds, scheduled=scheduled))
        if meanwhile is not None:
            others = await meanwhile(task)
            return [await task, *others]
        if cancel_after is None:
            return [await task]
        await asyncio.sleep(cancel_after)
        task.cancel()
        try:
            return [await task]
        except asyncio.CancelledError:
            return [None]

    def world(self):
        return read_world(self.db_url, self.redis, self.keys, self.sim.calls)

    def push(self, *items, priority: bool = False) -> None:
        self.redis.rpush(self.keys.priority if priority else self.keys.queue, *[i.raw for i in items])
        for item in items:
            self.items[item.id] = item
            if priority:
                self.priority.add(item.id)

    @property
    def systemic_fault(self) -> bool:
        return self.sim.maintenance or TEST_TOKEN not in self.sim.tokens

    @property
    def any_fault(self) -> bool:
        return self.systemic_fault or self.sim.server_error or bool(self.broken)

    def drain_step(
        self,
        seconds: float,
        *,
        cancel_after: float | None = None,
        dead_postgres: bool = False,
        postgres_dies_at_commit: int | None = None,
        redis_dies_after: float | None = None,
        redis_refuses: bytes | None = None,
        postgres_refuses: bool = False,
        meanwhile=None,
        scheduled: bool = False,
    ):
        """One drain (and whatever `meanwhile` starts beside it), then every check of a step."""
        self.clean = False
        before = self.world()
        postgres_proxy = redis_proxy = None
        if postgres_dies_at_commit is not None:
            postgres_proxy = PostgresProxy(self.db_url, postgres_dies_at_commit)
            summaries = self._drain_through_postgres(seconds, postgres_proxy)
        elif redis_refuses is not None:
            redis_proxy = RedisCommandCutter(self.redis_url, redis_refuses)
            summaries = self._drain_through_redis(seconds, redis_proxy)
        elif redis_dies_after is not None:
            redis_proxy = RedisProxy(self.redis_url)
            summaries = self._drain_through_redis(seconds, redis_proxy, dies_after=redis_dies_after)
        elif postgres_refuses:
            summaries = self._drain_with_database(seconds, self.restricted_url())
        elif dead_postgres:
            summaries = self._drain_with_database(seconds, DEAD_POSTGRES)
        else:
            summaries = self.runner.run(
                self._run(seconds, cancel_after=cancel_after, scheduled=scheduled, meanwhile=meanwhile)
            )
        if redis_proxy is not None:
            # A drain that lost Redis could not give its lease up: it lapses on its own (10 s).
            self.redis.delete(self.keys.lease)
        after = self.world()
        postgres_died = postgres_proxy is not None and postgres_proxy.commits >= postgres_proxy.cut_at
        self._note_events(summaries, after, postgres_died)
        self._check_every_step(before, after, waiting_successor=meanwhile is not None)
        summary = summaries[0]
        if dead_postgres:
            self._check_nothing_done(before, after, summary)
        elif (
            summary is None
            or postgres_died
            or postgres_refuses
            or redis_proxy is not None
            or summary.stopped == LEASE_LOST
            or (
                # A short deadline bounds every statement (issue 24): on a loaded machine the last
                # writes can run out of time, and the run then leaves them to recovery as if
                # Postgres had gone away.
                seconds < 10 and summary.cause == "database_unavailable"
            )
        ):
            self._check_left_for_recovery(after, summary, postgres_fault=postgres_died)
        else:
            self._check_run_ended(after, summaries, seconds=seconds, alone=meanwhile is None)
        self.clean = True

    # -- a step's drain, by the fault it meets ----------------------------------------------

    def _drain_through_postgres(self, seconds: float, proxy: PostgresProxy):
        async def go():
            db = await Database.open(await proxy.start(), connect_timeout=0.5)
            try:
                return await self._run(seconds, db=db)
            finally:
                await proxy.die()
                await db.close()

        return self.runner.run(go())

    def _drain_through_redis(self, seconds: float, proxy: RedisProxy, *, dies_after: float | None = None):
        async def cut(task):
            await asyncio.sleep(dies_after)
            await proxy.die()
            return []

        async def go():
            client = aioredis.Redis.from_url(await proxy.start(), socket_connect_timeout=0.5)
            try:
                queue = RefreshQueue(client, self.keys)
                return await self._run(seconds, queue=queue, meanwhile=None if dies_after is None else cut)
            finally:
                await proxy.die()
                await client.aclose()

        return self.runner.run(go())

    def _drain_with_database(self, seconds: float, url: str):
        db = self.runner.run(Database.open(url, connect_timeout=0.5))
        try:
            return self.runner.run(self._run(seconds, db=db))
        finally:
            self.runner.run(db.close())

    # -- a step's checks ----------------------------------------------------------------------

    @staticmethod
    def _note_events(summaries, after, postgres_died: bool) -> None:
        """Shown by --hypothesis-show-statistics: how runs ended, and whether Postgres died with
        a batch in doubt (settled items left in the in-flight list for recovery)."""
        for s in summaries:
            event(f"run stopped: {s.stopped if s else 'cancelled'}")
        if postgres_died:
            settled = after.settled_ids()
            in_doubt = any(raw_id(r) in settled for r in after.inflight)
            event(f"postgres died; settled items left in flight: {in_doubt}")

    def _check_every_step(self, before, after, *, waiting_successor: bool) -> None:
        assert after.lease is None, "the drain left its lease behind"
        assert self.redis.get(self.keys.successor) is None or waiting_successor
        # Each lane afterwards: its old in-flight items and the old lane, minus what settled, in order.
        assert (after.queue, after.priority) == expected_lanes_after(before, after)
        lanes = {"queue": [], "priority": []}
        for raw, lane in zip(before.inflight, before.inflight_lanes, strict=True):
            lanes[lane].append(raw_id(raw))
        lanes["queue"] += [raw_id(r) for r in before.queue]
        lanes["priority"] += [raw_id(r) for r in before.priority]
        # Every run that recorded its summary in this step (a hand-over chain has several). A
        # summary recorded late, by this step's run, is of a run in an earlier step that lost
        # Postgres: its counts include rows it never managed to write.
        for run_id in set(after.summaries) - set(before.summaries):
            stored = SimpleNamespace(**after.summaries[run_id]["summary"])
            if getattr(stored, "recorded_by", None) is not None:
                continue
            check_run_order(after, run_id, lanes["queue"], lanes["priority"])
            check_lane_share(after, run_id, self.priority)
            # A cancelled run cannot know whether a write the cancellation cut short committed.
            if stored.stopped != "cancelled":
                check_summary(after, stored)

    @staticmethod
    def _check_nothing_done(before, after, summary) -> None:
        """Postgres down from the start: nothing taken, written or called."""
        assert summary.stopped == CIRCUIT_OPEN and summary.cause == "database_unavailable"
        assert after.queue == before.queue and after.inflight == before.inflight
        assert after.priority == before.priority
        assert after.rows == before.rows
        assert len(after.calls) == len(before.calls), "a drain without Postgres called the API"

    def _check_left_for_recovery(self, after, summary, *, postgres_fault: bool) -> None:
        """A cancelled run, one whose Postgres or Redis failed, or one that lost its lease may
        leave items for recovery."""
        self.inflight_allowed = True
        if summary is not None and summary.stopped == LEASE_LOST:
            # Fenced out of the in-flight list: it wrote its rows, moved nothing, and says why.
            assert summary.cause == "lease_lost", summary
        if summary is not None and (postgres_fault or summary.stopped == CIRCUIT_OPEN):
            # An internal error keeps its stop and cause, even when Postgres dies as the run
            # winds down after it (the invocation must fail); a fault replaces any other stop.
            assert summary.stopped in (CIRCUIT_OPEN, StopCode.INTERNAL_ERROR), summary
            if summary.stopped is StopCode.INTERNAL_ERROR:
                assert summary.cause == "internal_error", summary
            else:
                assert summary.cause in ("database_unavailable", "redis_unavailable") or not (
                    postgres_fault or summary.items.get("left")
                ), summary
        if summary is not None and summary.run_id in after.summaries:
            self.finished_runs.add(summary.run_id)

    def _check_run_ended(self, after, summaries, *, seconds: float, alone: bool) -> None:
        """Runs that kept Postgres and Redis: each accounts for everything it took."""
        self.inflight_allowed = False
        summary = summaries[0]
        for s in summaries:
            if s.stopped != "lease_held":
                self.finished_runs.add(s.run_id)
                check_summary(after, s)
                assert s.items.get("left", 0) == 0 and s.items.get("dead_lettered", 0) == 0, s
        rows = run_rows(after, summary.run_id)
        if self.systemic_fault:
            # Maintenance or a revoked key: nothing that needed the API failed or was fetched.
            offline = OFFLINE_REASONS | {"interrupted", "unexpected_error"}
            bad = [
                (r["request_id"], r["outcome"], r["reason"])
                for r in rows
                if r["outcome"] == "fetched" or (r["outcome"] == "failed" and r["reason"] not in offline)
            ]
            assert not bad, f"a systemic fault settled requests: {bad}"
            assert summary.stopped in (CIRCUIT_OPEN, QUEUE_EMPTY, DEADLINE, StopCode.INTERNAL_ERROR)
            if any(r["outcome"] == "attempted" for r in rows) and seconds >= 10 and not self.broken:
                assert summary.stopped == CIRCUIT_OPEN
        elif not self.any_fault and seconds >= 10 and alone:
            # No fault: the queue empties, unless a slow machine (a loaded CI, one call in
            # flight) runs out of time first; what is left then waits in the queue, in order.
            assert summary.stopped in (QUEUE_EMPTY, DEADLINE), summary
            assert after.inflight == []
            assert (after.queue == after.priority == []) or summary.stopped == DEADLINE, summary

    # -- rules: requests -------------------------------------------------------------------

    @initialize(policy=policies, specs=st.lists(request_specs, min_size=1, max_size=12))
    def start(self, policy, specs):
        self.policy = policy
        self.enqueue(specs)

    @rule(specs=st.lists(request_specs, min_size=1, max_size=6), priority=st.booleans())
    def enqueue(self, specs, priority=False):
        items = []
        for category, kind, option in specs:
            if category == "malformed":
                items.append(self.factory.malformed(option))
                continue
            item = self.factory.request(
                category, kind, with_id=option != "no_id", lower_case=option == "lower_case"
            )
            if category == "not_found":
                self.sim.not_found.add(item.tag)
            elif category == "private":
                self.sim.private_war_log.add(item.tag)
            items.append(item)
        self.push(*items, priority=priority)

    @rule(n=st.integers(12, 30))
    def enqueue_backlog(self, n):
        self.push(*[self.factory.request("valid", "player") for _ in range(n)])

    @rule(n=st.integers(12, 40))
    def a_flood_of_priority_requests(self, n):
        self.push(*[self.factory.request("valid", "clan") for _ in range(n)], priority=True)

    # -- rules: faults ---------------------------------------------------------------------

    @rule(pick=st.integers(0, 1000))
    def a_tag_goes_missing(self, pick):
        # Chosen from the model, not from Redis, so the choice does not depend on timing.
        valid = [i for i in self.items.values() if i.category == "valid"]
        if valid:
            tag = valid[pick % len(valid)].tag
            self.missing.add(tag)
            self.sim.not_found.add(tag)

    @rule()
    def missing_tags_come_back(self):
        self.sim.not_found.difference_update(self.missing)

    @rule(low=st.sampled_from([0.0, 0.02, 0.1]), spread=st.sampled_from([0.0, 0.05, 0.2]))
    def latency(self, low, spread):
        self.sim.latency = (low, low + spread)

    @rule(on=st.booleans())
    def maintenance(self, on):
        self.sim.maintenance = on

    @rule(on=st.booleans())
    def key_revoked(self, on):
        if on:
            self.sim.tokens.discard(TEST_TOKEN)
        else:
            self.sim.tokens.add(TEST_TOKEN)

    @rule(on=st.booleans())
    def server_errors(self, on):
        self.sim.server_error = on

    # -- rules: drains ---------------------------------------------------------------------

    @rule()
    def drain(self):
        self.drain_step(30.0)

    @rule(seconds=st.floats(0.2, 1.5))
    def drain_with_a_short_deadline(self, seconds):
        self.drain_step(seconds)

    @rule(after=st.floats(0.0, 0.8))
    def drain_cancelled_part_way(self, after):
        self.drain_step(30.0, cancel_after=after)

    @rule(commit=st.integers(1, 6))
    def drain_while_postgres_dies(self, commit):
        self.drain_step(30.0, postgres_dies_at_commit=commit)

    @rule()
    def drain_with_postgres_down(self):
        self.drain_step(30.0, dead_postgres=True)

    @rule(after=st.floats(0.0, 0.6))
    def drain_while_redis_dies(self, after):
        self.drain_step(30.0, redis_dies_after=after)

    @rule(script=st.sampled_from(["_ACK", "_PUT_BACK", "_DEAD_LETTER", "_TAKE"]))
    def drain_while_redis_refuses_one_command(self, script):
        """Redis fails one kind of command every time (recovery's included), all else works."""
        self.drain_step(30.0, redis_refuses=getattr(queue_scripts, script).encode()[:60])

    @rule()
    def drain_while_postgres_refuses_snapshots(self):
        """Postgres refuses every snapshot write (privileges revoked): no request may fail for it."""
        self.drain_step(30.0, postgres_refuses=True)

    def restricted_url(self) -> str:
        """This database as a role that may not write player snapshots (made once per machine)."""
        if getattr(self, "_restricted_url", None) is None:
            role = f"coc_prop_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                conn.execute(f"CREATE ROLE {role} LOGIN")
                conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
                conn.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
                conn.execute(f"REVOKE INSERT, UPDATE ON players, clans, wars FROM {role}")
            self._role = role
            info = psycopg.conninfo.conninfo_to_dict(self.db_url)
            self._restricted_url = psycopg.conninfo.make_conninfo(**{**info, "user": role})
        return self._restricted_url

    @rule(after=st.floats(0.0, 0.8))
    def drain_whose_lease_is_taken(self, after):
        """Its lease lapses and another drain takes it: the run stops `lease_lost`, still writes
        its rows, and leaves what it holds in the in-flight list (the fence refuses every change
        to it), for the next run's recovery; nothing is counted against those requests."""

        async def steal(task):
            await asyncio.sleep(after)
            if not task.done() and await self.aredis.exists(self.keys.lease):
                # Its lease lapsed (a long pause, a partition) and another drain took it.
                await self.aredis.set(self.keys.lease, "another-drain keeps", px=30_000)
                await task
                await self.aredis.delete(self.keys.lease)  # that other drain ends
            return []

        self.drain_step(30.0, meanwhile=steal, scheduled=True)

    @rule(after=st.floats(0.0, 0.8), scheduled=st.booleans())
    def another_invocation_arrives(self, after, scheduled):
        """A second invocation while the first drains: a scheduled one takes over, any other
        returns `lease_held` at once."""

        async def arrive(task):
            await asyncio.sleep(after)
            other = await self._other_container()
            summary = await other.run(time.monotonic() + 30.0, scheduled=scheduled)
            if not scheduled and not task.done():
                assert summary.stopped == "lease_held"
            return [summary]

        self.drain_step(30.0, meanwhile=arrive, scheduled=True)

    @rule(after=st.floats(0.0, 0.8))
    def a_successor_dies_after_announcing_itself(self, after):
        """What a SIGKILLed successor leaves: an announcement nobody refreshes (it lapses in 3 s)."""

        async def ghost(task):
            await asyncio.sleep(after)
            if not task.done():
                await self.aredis.set(self.keys.successor, "ghost-run yields", px=3000)
            return []

        self.drain_step(30.0, meanwhile=ghost, scheduled=True)
        self.redis.delete(self.keys.successor)

    # -- rules: bugs -----------------------------------------------------------------------

    @rule(pick=st.integers(0, 1000))
    def a_bug_meets_a_tag(self, pick):
        valid = [i for i in self.items.values() if i.category == "valid"]
        if valid:
            tag = valid[pick % len(valid)].tag
            self.broken.add(tag)
            self.ever_broken.add(tag)

    @rule()
    def the_bug_is_fixed(self):
        self.broken.clear()

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def ledger_queue_and_api_agree(self):
        self.clean = False
        world = self.world()
        self.ledger.advance(world)
        check_conservation(world, self.items, inflight_allowed=self.inflight_allowed)
        check_request_histories(world, finished_runs=self.finished_runs)
        check_calls(world, self.items)
        check_outcomes(
            world,
            self.items,
            missing_tags=self.missing,
            broken_tags=self.ever_broken,
            interrupted_limit=self.policy.interrupted_limit,
        )
        self.check_the_rate()
        self.clean = True

    def check_the_rate(self):
        """At most RATE starts in any second, every limiter together (a hand-over's seam
        included), on their own clock; and every call the API saw went through one of them."""
        starts = [at for limiter in self.limiters for at in limiter.starts]
        assert max_calls_in_window(starts, 1.0) <= RATE
        assert len(self.sim.calls) <= len(starts)

    # -- the end: faults off, drain until empty, everything settled once -------------------

    def settle_everything(self):
        sim = self.sim
        sim.maintenance = sim.server_error = False
        self.broken.clear()
        sim.tokens.add(TEST_TOKEN)
        sim.latency = (0.0, 0.0)
        sim.not_found.difference_update(self.missing)
        for _ in range(6):
            world = self.world()
            if not world.queue and not world.priority and not world.inflight:
                break
            self.drain_step(30.0)
        world = self.world()
        assert world.queue == world.priority == world.inflight == [], "faults off, yet drains left work"
        self.ledger.advance(world)
        check_conservation(world, self.items, inflight_allowed=False)
        check_request_histories(world, finished_runs=self.finished_runs)
        check_calls(world, self.items)
        check_outcomes(
            world,
            self.items,
            missing_tags=self.missing,
            broken_tags=self.ever_broken,
            interrupted_limit=self.policy.interrupted_limit,
        )
        for item in self.items.values():
            settles = world.settling(item.id)
            assert len(settles) == 1, f"{item.id} ended with {len(settles)} settling rows"
        self.check_the_rate()

    def teardown(self):
        try:
            if self.clean:
                self.settle_everything()
        finally:

            async def close():
                for api in self.other_apis:
                    await api.close()
                if self.api is not None:
                    await self.api.close()
                if self.db is not None:
                    await self.db.close()
                if self.aredis is not None:
                    await self.aredis.aclose()

            self.runner.run(close())
            self.runner.close()
            keys = self.redis.keys(self.keys.queue.split("}")[0] + "}*")
            if keys:
                self.redis.delete(*keys)
            self.redis.close()
            drop_database(self.admin_url, self.db_name)
            if getattr(self, "_role", None) is not None:  # roles outlive their database
                with psycopg.connect(self.admin_url, autocommit=True) as conn:
                    conn.execute(f"DROP ROLE IF EXISTS {self._role}")


@pytest.mark.slow
@pytest.mark.timeout(900)  # a failure is shrunk for up to 5 minutes: let it report
def test_drain_state_machine(pg_admin_url, template_database, redis_url, simulator):
    DrainMachine.admin_url = pg_admin_url
    DrainMachine.template = template_database
    DrainMachine.redis_url = redis_url
    DrainMachine.sim = simulator
    run_state_machine_as_test(
        DrainMachine,
        settings=settings(
            max_examples=int(os.environ.get("DRAIN_PROPERTY_EXAMPLES", "14")),
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


@pytest.mark.parametrize("cut_at_commit", range(1, 9))
def test_postgres_dying_right_after_a_commit_neither_loses_nor_repeats_a_request(
    cut_at_commit, database_url, redis_url, simulator
):
    """Postgres dies just after committing the k-th transaction, before the worker hears back.

    One call at a time and one row per flush, so the commits alternate between `attempted`
    groups and terminal batches and every k hits a different point of the run. Whatever the
    worker does about the transaction it cannot know landed, a later run must end with every
    request settled exactly once, and a settled request must never be taken again.
    """
    factory = RequestFactory()
    items = [factory.request("valid", "player") for _ in range(3)]
    items += [factory.request("not_found", "clan") for _ in range(2)]
    items.append(factory.malformed("bad_kind"))
    simulator.not_found.update(i.tag for i in items if i.category == "not_found")
    keys = QueueKeys(f"{{coc:pgdies:{uuid.uuid4().hex[:12]}}}:queue")
    client = redis.Redis.from_url(redis_url)
    client.rpush(keys.queue, *[i.raw for i in items])
    by_id = {i.id: i for i in items}
    policy = DrainPolicy(
        checks=True,
        max_in_flight=1,
        dispatch_batch=1,
        prefetch=2,
        flush_rows=1,
        flush_interval=0.01,
        retry_backoff=0.01,
        finish_reserve=0.1,
    )

    async def drains():
        aredis = aioredis.Redis.from_url(redis_url)
        queue = RefreshQueue(aredis, keys)
        limiter = RateLimiter(RATE)
        api = await CocApi.connect(base_url=simulator.base_url, limiter=limiter, tokens=(TEST_TOKEN,))

        async def connect():
            return api

        proxy = PostgresProxy(database_url, cut_at_commit)
        dying = await Database.open(await proxy.start(), connect_timeout=0.5)
        db = await Database.open(database_url)
        try:
            first = await Drain(
                queue=queue, db=dying, connect_api=connect, limiter=limiter, policy=policy
            ).run(time.monotonic() + 30)
            middle = read_world(database_url, client, keys, simulator.calls)
            summaries = []
            for _ in range(3):  # Postgres is back
                summaries.append(
                    await Drain(queue=queue, db=db, connect_api=connect, limiter=limiter, policy=policy).run(
                        time.monotonic() + 30
                    )
                )
            return first, middle, summaries
        finally:
            await proxy.die()
            await dying.close()
            await db.close()
            await api.close()
            await aredis.aclose()

    try:
        first, middle, summaries = asyncio.run(drains())
        assert proxy_cut(first), first
        # Right after the death: nothing lost, nothing settled twice, nothing settled queued.
        check_conservation(middle, by_id, inflight_allowed=True)
        world = read_world(database_url, client, keys, simulator.calls)
        assert world.queue == [] and world.inflight == []
        check_conservation(world, by_id, inflight_allowed=False)
        check_request_histories(world, finished_runs=[s.run_id for s in summaries])
        check_calls(world, by_id)
        check_outcomes(world, by_id, interrupted_limit=policy.interrupted_limit)
        for item in items:
            assert len(world.settling(item.id)) == 1, (item.id, world.rows_of(item.id))
    finally:
        client.close()


def proxy_cut(summary) -> bool:
    return summary.stopped == CIRCUIT_OPEN and summary.cause == "database_unavailable"
