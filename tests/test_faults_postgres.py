"""A table locked mid-run (issue 24, scenario 4), against real Postgres, Redis and the simulator.

Before: with `refresh_ledger` locked 14 s into a 20-second drain, the drain returned after 54 s:
each blocked write waited out the session's 15 s `statement_timeout`, and the ledger-size query
after the run blocked as well. On Lambda that is a kill at the timeout, not a clean stop. Now
every transaction of a run ends by its deadline and the housekeeping after a run Postgres
failed is skipped.

The drain is judged by when it returned against the deadline it was given, both read from one
clock (`time.monotonic`, the drain's own) with the worker's connections made beforehand: the
run must be back by then, however slow the machine, because its reserve is what it waits in.
"""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg

from coclib.queue import RefreshRequest, parse_item
from coclib.testing.tags import numbered_tag
from tests.helpers import drain, inflight_items, ledger, outcomes, push, queue_items
from worker.drain import DrainPolicy
from worker.runtime import Worker


class TableLocker(threading.Thread):
    """A second session that locks `table` once `ready` (a query) says so, until `release()`."""

    def __init__(self, url: str, table: str, ready: str) -> None:
        super().__init__(daemon=True)
        self.url, self.table, self.ready = url, table, ready
        self.locked = threading.Event()
        self._release = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as watcher:
                while not watcher.execute(self.ready).fetchone()[0]:
                    if self._release.wait(0.02):
                        return
            with psycopg.connect(self.url) as conn, conn.transaction():
                conn.execute(f"LOCK TABLE {self.table} IN ACCESS EXCLUSIVE MODE")
                self.locked.set()
                self._release.wait()
        except BaseException as exc:
            self.error = exc

    def release(self) -> None:
        self._release.set()
        self.join()


def test_a_ledger_locked_mid_run_does_not_hold_the_drain_past_its_deadline(
    settings, redis_client, database_url, simulator
):
    requests = [RefreshRequest(f"r{n}", "player", numbered_tag(n), 1_700_000_000.0) for n in range(150)]
    push(redis_client, settings, *requests)
    simulator.latency = (0.05, 0.1)
    policy = DrainPolicy(finish_reserve=2.0, checks=True)
    locker = TableLocker(
        database_url, "refresh_ledger", "SELECT count(*) >= 20 FROM refresh_ledger WHERE outcome = 'fetched'"
    )

    async def run() -> tuple:
        worker = Worker(settings, policy=policy)
        try:
            await worker.queue(), await worker.db()  # connected: the deadline is all the drain's
            given = time.monotonic() + 8.0
            report = await worker.run(8.0)
            return report, given, time.monotonic()
        finally:
            await worker.close()

    locker.start()
    try:
        report, given, returned = asyncio.run(run())
        locked_in_time = locker.locked.is_set()
    finally:
        locker.release()
    assert locker.error is None, locker.error

    assert locked_in_time, "the lock came after the run: nothing was tested"
    summary = report.summary
    assert (summary.stopped, summary.cause) == ("circuit_open", "database_unavailable"), summary
    # Before: back only after the session's 15 s statement_timeout, twice over.
    assert returned <= given, f"returned {returned - given:.3f} s after the deadline"
    assert report.ledger is None  # no ledger-size query against a Postgres that just failed

    # Nothing lost: every request settled, or waiting for the next run, which settles each once.
    settled = {r["request_id"] for r in ledger(database_url) if r["outcome"] in ("fetched", "failed")}
    listed = queue_items(redis_client, settings) + inflight_items(redis_client, settings)
    assert {r.id for r in requests} - settled - {parse_item(raw).request_id for raw in listed} == set()
    assert drain(settings, 60.0, policy=DrainPolicy(checks=True)).stopped == "queue_empty"
    for request in requests:
        assert [o for o, _ in outcomes(database_url, request.id) if o in ("fetched", "failed")] == ["fetched"]
