"""Crash recovery: `python -m worker drain` killed with SIGKILL at random moments, then recovered.

A real drain process (the command line an operator or the local server runs, the same code
the Lambda handler calls) works through a backlog against this test's Postgres, Redis and the
session's simulator (it serves on 127.0.0.1 from a thread of the test process, so the child
reaches it over TCP). The test kills it with SIGKILL several times in a row, each time at a
point the child signals, never after a timed sleep (a loaded machine can take seconds just to
start an interpreter): as soon as it holds the lease (start-up, recovery, the first take) or
once it has written a random number of new `attempted` rows (calls in flight, flushes and
acknowledgements under way).

A killed drain leaves its lease in Redis for its 30-second TTL. Rather than wait, the test
deletes the lease key after each kill, which is exactly what its expiry would do, and starts
the next process (or, at the end, runs in-process drains until the queue is empty).

After every kill: nothing lost (every request is queued, in flight or settled), nothing
duplicated in the queue or in-flight lists, nothing settled twice, no settled request back in
the queue, the ledger only grew, and the API never saw a call without an `attempted` row before
it. At the end: every request ended `fetched` or `failed` (`interrupted` included) exactly once,
with an outcome that fits it, and the queue and in-flight lists are empty.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import redis

from coclib.keys import QueueKeys
from coclib.settings import Settings
from tests.helpers import drain
from tests.invariants import (
    Ledger,
    RequestFactory,
    check_calls,
    check_conservation,
    check_outcomes,
    check_request_histories,
    read_world,
)
from worker.drain import DrainPolicy

ROOT = Path(__file__).resolve().parents[1]
KILLS = 7
SIGNAL_WAIT_SECONDS = 120  # a bound on a child that never signals (it failed), not a timing


def _wait_for(what: str, signalled, proc: subprocess.Popen, log: Path) -> bool:
    """Poll until `signalled()`; False if the child exited first. Fails loudly after the bound."""
    deadline = time.monotonic() + SIGNAL_WAIT_SECONDS
    while not signalled():
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the drain never got to {what}; its log: {log.read_text()[-2000:]}")
        time.sleep(0.01)
    return True


def _attempted_rows(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM refresh_ledger WHERE outcome = 'attempted'").fetchone()[0]


def _backlog(factory: RequestFactory, sim) -> list:
    # About 300 requests: at 30/s more work than the killed processes get through.
    items = [factory.request("valid", kind) for kind in ("player", "clan", "war") for _ in range(95)]
    items += [factory.request("not_found", "player") for _ in range(8)]
    items += [factory.request("private", "war") for _ in range(5)]
    items += [factory.malformed(v) for v in ("not_json", "bad_kind", "bad_tag", "too_big", "no_tag")]
    random.Random(7).shuffle(items)
    sim.not_found.update(i.tag for i in items if i.category == "not_found")
    sim.private_war_log.update(i.tag for i in items if i.category == "private")
    return items


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_sigkilled_drains_lose_nothing_and_settle_everything_once(
    seed, worker_env, database_url, simulator, tmp_path
):
    rng = random.Random(seed)
    queue_key = f"{{coc:crash:{uuid.uuid4().hex[:12]}}}:queue"
    env = {**worker_env, "REFRESH_QUEUE_KEY": queue_key, "LOG_LEVEL": "WARNING"}
    settings = Settings.from_env(env)
    keys = QueueKeys(queue_key)
    client = redis.Redis.from_url(settings.queue.redis_url)
    simulator.latency = (0.05, 0.25)

    factory = RequestFactory()
    items = _backlog(factory, simulator)
    by_id = {i.id: i for i in items}
    client.rpush(keys.queue, *[i.raw for i in items])

    ledger = Ledger()
    child_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    kills: list[tuple[str, int, int]] = []  # (kill point, ledger rows, in-flight items)
    watch = psycopg.connect(database_url, autocommit=True)
    try:
        for n in range(KILLS):
            log_path = tmp_path / f"drain-{n}.log"
            log = log_path.open("wb")
            attempted_before = _attempted_rows(watch)
            # The first kill lands as soon as the child holds the lease; the others after a
            # random number of new `attempted` rows, so the kills spread over the run's phases.
            more = 0 if n == 0 else rng.randint(1, 60)
            point = "lease taken" if more == 0 else f"{more} new attempted rows"
            proc = subprocess.Popen(
                # --seconds: far more than any kill point needs; the kill, not the deadline, ends it.
                [sys.executable, "-m", "worker", "drain", "--seconds", "120"],
                cwd=ROOT,
                env=child_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            target = attempted_before + more
            if more == 0:
                reached = _wait_for(point, lambda: client.exists(keys.lease), proc, log_path)
            else:
                reached = _wait_for(
                    point, lambda target=target: _attempted_rows(watch) >= target, proc, log_path
                )
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            log.close()
            if not reached:
                point += " (the drain had ended: the queue was empty)"

            world = read_world(database_url, client, keys, simulator.calls)
            context = f"kill {n + 1} at {point} (seed {seed}); log: {log_path}"
            try:
                ledger.advance(world)
                check_conservation(world, by_id, inflight_allowed=True)
                check_request_histories(world)
                check_calls(world, by_id)
                check_outcomes(world, by_id)
            except AssertionError as exc:
                raise AssertionError(f"after {context}: {exc}") from exc
            kills.append((point, len(world.rows), len(world.inflight)))
            # The dead drain's lease would expire after its 30 s TTL: expire it now.
            client.delete(keys.lease)

        # Recovery: in-process drains, each a fresh worker as a cold Lambda start would be.
        summaries = []
        for _ in range(4):
            world = read_world(database_url, client, keys, simulator.calls)
            if not world.queue and not world.inflight:
                break
            summaries.append(drain(settings, seconds=30, policy=DrainPolicy(checks=True)))

        world = read_world(database_url, client, keys, simulator.calls)
        ledger.advance(world)
        assert summaries, f"the killed processes drained everything: nothing left to recover ({kills})"
        assert world.queue == [] and world.inflight == [], f"not drained after {summaries}"
        check_conservation(world, by_id, inflight_allowed=False)
        check_request_histories(world, finished_runs=[s.run_id for s in summaries])
        check_calls(world, by_id)
        check_outcomes(world, by_id, interrupted_limit=DrainPolicy().interrupted_limit)
        for item in items:
            settles = world.settling(item.id)
            assert len(settles) == 1, f"{item.id} settled {len(settles)} times: {world.rows_of(item.id)}"
        # The kills really did interrupt work: some runs left attempts without a terminal row.
        abandoned = {(r["request_id"], r["run_id"]) for r in world.rows if r["outcome"] == "attempted"} - {
            (r["request_id"], r["run_id"]) for r in world.rows if r["outcome"] != "attempted"
        }
        assert abandoned, f"no kill landed while a request was in flight: {kills}"
        assert any(n for _, _, n in kills), f"no kill left anything in the in-flight list: {kills}"
    finally:
        watch.close()
        client.delete(*client.keys(queue_key.split("}")[0] + "}*") or [keys.queue])
        client.close()
