"""The completion signal: does `LISTEN refresh_done` hear every settled request, and how soon?

    python bench/notify_bench.py --seconds 60 --rate 4 --rate 20     # writes bench/notify.md
    python bench/notify_bench.py --seconds 10 --rate 4 --out -       # a quick look

For each `--rate R`: a producer in this process enqueues R requests per second for `--seconds`
(every tag different; one in ten unknown to the simulator, so `failed` `not_found` is heard too),
while a listener thread, on a connection of its own, LISTENs on `refresh_done` and notes when
it hears each request. The drainer is a separate process (a warm container): it runs drains
back to back, and after one that found the queue empty it waits 0.25 s before the next, the
stand-in for `DRAIN_LINGER_SECONDS` (issue 19's other half) so a pushed request is picked up
at once instead of at the next 2-minute schedule. The simulator runs in this process with
100-300 ms of uniform latency per call and its 429 at the limit of 30/s.

Measured, per rate:
* heard: every settling ledger row (fetched or failed) of the pushed requests, matched against
  what the listener heard: missing (settled, never heard), heard twice, heard but not settled;
* push -> heard: from the producer's enqueue to the notification (what a site waiting for its
  refresh sees), p50, p95, max; the target is p95 <= 2 s;
* row -> heard: from the settling row's `occurred_at` (its transaction's start: the batch
  commits a few ms later) to the notification: what the signal itself adds;
* notifications: how many the listener heard (one per settling batch, more for a batch whose
  payload passes 8,000 bytes), and settled requests per notification.

Then what the signal costs the writer, and the alternative it was chosen over: `--batches`
times, `LedgerWriter.append` of one flush's worth of settled requests (15 `fetched` rows with
their player snapshots: 0.5 s at 30/s), alternating three variants on one database: no
notification; the writer's own (`pg_notify` in the statement that inserts the rows, payloads
split in Python); and a statement-level AFTER INSERT trigger on the ledger with a transition table that
sends one `json_agg` payload (no splitting: cheaper than a real one would be).

Not a test: pytest does not collect it. Postgres: TEST_DATABASE_URL, else the local server
(a database `coc_bench_notify` is dropped and created for each rate); Redis: TEST_REDIS_URL,
else the local server, in db 15 or 14, claimed as the test sessions claim theirs (a key
`coc-tests:claimed-by`), so a test session running meanwhile never gets it flushed under it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402

from bench.report import (  # noqa: E402
    claimed_redis_db,
    describe_machine,
    flush_keeping_claim,
    provenance,
    write_keeping_notes,
)
from coclib.completions import CHANNEL, SETTLED_OUTCOMES, parse_payload  # noqa: E402
from coclib.db import Database  # noqa: E402
from coclib.keys import QueueKeys  # noqa: E402
from coclib.migrations import migrate  # noqa: E402
from coclib.queue import enqueue  # noqa: E402
from coclib.settings import DEFAULT_QUEUE_KEY  # noqa: E402
from coclib.snapshots import snapshot_of  # noqa: E402
from coclib.testing.services import LOCAL_POSTGRES, LOCAL_REDIS, create_database  # noqa: E402
from coclib.testing.simulator import CocApiSimulator, SimulatorThread, simulated_body  # noqa: E402
from coclib.testing.tags import numbered_tag  # noqa: E402
from ledger.outcomes import LedgerRow, Outcome  # noqa: E402
from ledger.writer import LedgerWriter  # noqa: E402

DB_NAME = "coc_bench_notify"
TOKEN = "bench-token"
LIMIT = 30.0
LATENCY = (0.1, 0.3)
TARGET_P95 = 2.0
PICKUP_PAUSE = 0.25
NOTES_MARKER = "<!-- analysis: written by hand; notify_bench.py keeps everything below this line -->"

# The drainer: one warm process, drains back to back until argv[1] (unix time).
DRAINER = r"""
import asyncio, os, sys, time
sys.path.insert(0, os.environ["BENCH_ROOT"])
from coclib.settings import Settings
from worker.drain import StopCode
from worker.runtime import Worker

async def main(until, pause):
    worker = Worker(Settings.from_env())
    stopped = {}
    try:
        # Each drain gets 60 s, as a scheduled one gets its timeout; none starts too close to
        # the end to take work (the deadline buffer is 6 s).
        while until - time.time() > 10:
            summary = await worker.drain(min(60.0, until - time.time()))
            key = str(summary.stopped) + (f"/{summary.cause}" if summary.cause else "")
            stopped[key] = stopped.get(key, 0) + 1
            if summary.stopped == StopCode.QUEUE_EMPTY:
                await asyncio.sleep(pause)
        db = await worker.db()
        runs = " ".join(f"{k}={v}" for k, v in sorted(stopped.items()))
        print(f"RESULT {runs} round_trips={db.round_trips}", flush=True)
    finally:
        await worker.close()

asyncio.run(main(float(sys.argv[1]), float(sys.argv[2])))
"""


@dataclass
class Result:
    rate: float
    seconds: float
    pushed: int = 0
    settled: int = 0
    missing: int = 0
    twice: int = 0
    unexpected: int = 0
    push_to_heard: list[float] | None = None
    row_to_heard: list[float] | None = None
    drains: str = ""
    unsettled: str = ""
    notes: int = 0


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Listener(threading.Thread):
    """LISTEN refresh_done on a direct connection; note when each request is heard."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(url, autocommit=True)
        self.conn.execute(f"LISTEN {CHANNEL}")
        self.heard: dict[str, list[float]] = {}
        self.notes = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for note in self.conn.notifies(timeout=0.5, stop_after=1):
                at = time.time()
                self.notes += 1
                for one in parse_payload(note.payload):
                    self.heard.setdefault(one.id, []).append(at)
        self.conn.close()


def _run(rate: float, seconds: float, admin: str, redis_url: str) -> Result:
    db_url = create_database(admin, DB_NAME)
    migrate(db_url)
    client = redis.Redis.from_url(redis_url)
    flush_keeping_claim(client)
    keys = QueueKeys(DEFAULT_QUEUE_KEY)
    result = Result(rate, seconds)
    pushed: dict[str, float] = {}
    with SimulatorThread(CocApiSimulator(tokens=(TOKEN,), latency=LATENCY, rate_limit=LIMIT)) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "COC_"))}
        env.update(
            BENCH_ROOT=str(ROOT),
            DATABASE_URL=db_url,
            REDIS_URL=redis_url,
            COC_API_BASE_URL=sim.base_url,
            COC_API_TOKENS=TOKEN,
            COC_REQS_PER_SEC=f"{LIMIT:g}",
            LOG_LEVEL="WARNING",
        )
        listener = Listener(db_url)
        listener.start()
        start = time.time() + 3.0  # the drainer's imports and first (empty) drain
        until = start + seconds + 40.0
        drainer = subprocess.Popen(
            [sys.executable, "-I", "-c", DRAINER, repr(until), repr(PICKUP_PAUSE)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(max(0.0, start - time.time()))
        n = 0
        while (now := time.time()) < start + seconds:
            due = start + n / rate
            if now < due:
                time.sleep(due - now)
                continue
            kind = ("player", "clan", "war")[n % 3]
            tag = numbered_tag(n + 14**4, lead="Y")
            if n % 10 == 9:
                sim.not_found.add(tag)
            request_id = enqueue(client, kind, tag, keys=keys)
            pushed[request_id] = time.time()
            n += 1
        # Wait for the last pushes to be heard (bounded: a lost one must not hang the bench).
        wait_until = time.time() + 25.0
        while time.time() < wait_until and not set(pushed) <= set(listener.heard):
            time.sleep(0.1)
        out, _ = drainer.communicate(timeout=until - time.time() + 60)
        listener.stopping.set()
        listener.join()
    client.close()

    result.drains = next((line[7:] for line in out.splitlines() if line.startswith("RESULT ")), out[-300:])
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT request_id, extract(epoch FROM occurred_at)::float8 FROM refresh_ledger "
            "WHERE outcome = ANY(%s)",
            (list(SETTLED_OUTCOMES),),
        ).fetchall()
    settled = {request_id: at for request_id, at in rows}
    result.pushed = len(pushed)
    unsettled = [r for r in pushed if r not in settled]
    if unsettled:
        with psycopg.connect(db_url) as conn:
            last = conn.execute(
                "SELECT DISTINCT ON (request_id) outcome || coalesce('/' || reason, '') FROM refresh_ledger "
                "WHERE request_id = ANY(%s) ORDER BY request_id, id DESC",
                (unsettled,),
            ).fetchall()
        found = [row[0] for row in last]
        result.unsettled = (
            f"{len(unsettled)} unsettled, last rows: "
            + ", ".join(f"{o}={found.count(o)}" for o in sorted(set(found)))
            + f", none={len(unsettled) - len(found)}"
        )
    result.notes = listener.notes
    result.settled = sum(1 for r in pushed if r in settled)
    result.missing = sum(1 for r in settled if r not in listener.heard)
    result.twice = sum(1 for times in listener.heard.values() if len(times) > 1)
    result.unexpected = sum(1 for r in listener.heard if r not in settled)
    heard_pushed = [r for r in pushed if r in listener.heard]
    result.push_to_heard = [listener.heard[r][0] - pushed[r] for r in heard_pushed]
    result.row_to_heard = [listener.heard[r][0] - settled[r] for r in heard_pushed if r in settled]
    return result


# The alternative: a trigger, sending what a statement inserted that settles (no splitting).
TRIGGER = """
CREATE FUNCTION bench_notify_settled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('refresh_done', json_agg(json_build_object(
                'id', request_id, 'kind', kind, 'tag', tag, 'outcome', outcome))::text)
    FROM new_rows WHERE outcome IN ('fetched', 'failed') HAVING count(*) > 0;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_notify_settled AFTER INSERT ON refresh_ledger
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench_notify_settled();
"""
VARIANTS = ("none", "writer", "trigger")
BATCH = 15


async def _writer_cost(admin: str, batches: int) -> dict[str, list[float]]:
    db_url = create_database(admin, DB_NAME)
    migrate(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(TRIGGER)
        conn.execute("ALTER TABLE refresh_ledger DISABLE TRIGGER bench_notify_settled")
    db = await Database.open(db_url)
    writer = LedgerWriter(db, uuid.uuid4())
    real_payloads = writer._payloads

    def no_payloads(*args: object) -> list[str]:
        return []

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        n = 0
        for i in range(batches * len(VARIANTS)):
            variant = VARIANTS[i % len(VARIANTS)]
            rows, snapshots = [], []
            for _ in range(BATCH):
                tag = numbered_tag(n + 14**5, lead="Q")
                n += 1
                rows.append(LedgerRow(uuid.uuid4().hex, Outcome.FETCHED, "player", tag, http_status=200))
                snapshots.append(snapshot_of("player", tag, simulated_body("player", tag), time.time()))
            writer._payloads = real_payloads if variant == "writer" else no_payloads  # type: ignore[method-assign]
            async with db.transaction() as conn:
                action = "ENABLE" if variant == "trigger" else "DISABLE"
                await conn.execute(f"ALTER TABLE refresh_ledger {action} TRIGGER bench_notify_settled")
            began = time.perf_counter()
            await writer.append(rows, snapshots)
            times[variant].append(time.perf_counter() - began)
    finally:
        await db.close()
    return times


def _report(results: list[Result], machine: dict[str, str], command: str) -> str:
    lines = [
        "# Completion signal: LISTEN refresh_done",
        "",
        *provenance(command, machine),
        "",
        "Simulator 100-300 ms, limit 30/s; one warm drainer process running drains back to back",
        f"(a {PICKUP_PAUSE} s pause after one that found the queue empty: the stand-in for linger).",
        f"Target: every settled request heard, push -> heard p95 <= {TARGET_P95:g} s.",
        "",
        "| rate | pushed | settled | missing | twice | not settled | push -> heard p50 / p95 / max "
        "| row -> heard p50 / p95 / max | notifications (requests each) | drainer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        a, b = r.push_to_heard or [0.0], r.row_to_heard or [0.0]
        lines.append(
            f"| {r.rate:g}/s for {r.seconds:g} s | {r.pushed} | {r.settled} | {r.missing} | {r.twice} "
            f"| {r.unexpected} | {statistics.median(a):.3f} / {_quantile(a, 0.95):.3f} / {max(a):.3f} s "
            f"| {statistics.median(b):.3f} / {_quantile(b, 0.95):.3f} / {max(b):.3f} s "
            f"| {r.notes} ({r.settled / max(1, r.notes):.1f}) | {r.drains} |"
        )
    ok = all(
        r.missing == 0
        and r.twice == 0
        and r.settled == r.pushed
        and _quantile(r.push_to_heard or [99], 0.95) <= TARGET_P95
        for r in results
    )
    lines += [f"\n{r.rate:g}/s: {r.unsettled}" for r in results if r.unsettled]
    lines += ["", f"Target met: {'yes' if ok else 'NO'}."]
    return "\n".join(lines)


def _cost_report(times: dict[str, list[float]]) -> str:
    base = statistics.median(times["none"])
    lines = [
        "",
        f"## What it costs the writer ({len(times['none'])} batches of {BATCH} settled requests per variant)",
        "",
        "| variant | median ms per batch | p95 ms | median over none |",
        "| --- | --- | --- | --- |",
    ]
    for variant in VARIANTS:
        t = times[variant]
        median = statistics.median(t)
        p95 = _quantile(t, 0.95)
        lines.append(
            f"| {variant} | {median * 1000:.2f} | {p95 * 1000:.2f} | {(median - base) * 1000:+.2f} ms |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, action="append", help="requests pushed per second (repeatable)")
    parser.add_argument("--batches", type=int, default=300, help="writer batches per variant (0: skip)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "notify.md"), help="'-' prints the report")
    args = parser.parse_args()
    rates = args.rate or [4.0]
    admin = os.environ.get("TEST_DATABASE_URL") or LOCAL_POSTGRES
    machine = describe_machine()
    with claimed_redis_db(os.environ.get("TEST_REDIS_URL") or LOCAL_REDIS, "notify-bench") as redis_url:
        results = [_run(rate, args.seconds, admin, redis_url) for rate in rates]
    command = "python bench/notify_bench.py " + " ".join(sys.argv[1:])
    report = _report(results, machine, command)
    if args.batches:
        report += "\n" + _cost_report(asyncio.run(_writer_cost(admin, args.batches)))
    if args.out == "-":
        print(report)
    else:
        write_keeping_notes(Path(args.out), report, NOTES_MARKER)
        print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
