"""A day of scheduled invocations, compressed or not: how much of the rate limit a standing backlog gets.

    python bench/schedule_bench.py --schedule 24,60,6 --schedule 120,300,20   # writes bench/schedule.md
    python bench/schedule_bench.py --schedule 24,60,2 --out -                  # a quick look

Each `--schedule P,T,MINUTES` fires an invocation every P seconds for MINUTES minutes, as an
EventBridge rule does, each in a fresh `python -I` process (a cold container) with a
Lambda-like context whose timeout is T seconds; invocations overlap as they do on Lambda, and
one still running T seconds after it was fired is killed, as Lambda kills it. The backlog never
runs out (COC_REQS_PER_SEC x the window, and 2,000 more, every tag different). The simulator
runs in this process with 100-300 ms of uniform latency per call and its 429 at the limit.

Every schedule runs twice, one after the other, on a fresh database, Redis db and simulator:

* before: each invocation is `{"action": "drain"}`, which never takes over a running drain and
  returns `lease_held` when it finds one: exactly how a scheduled invocation behaved before
  hand-over (issue 12). Same code, same deadlines, same limiter.
* hand-over: each invocation is an EventBridge scheduled event; a newer one takes the running
  drain over (README, "Hand-over").

Measured over the window [first fire, first fire + MINUTES), on the simulator's clock (the
calls the API saw): calls per second against the limit, the busiest second, the tightest span
of limit + 1 consecutive calls (under 1 s means a 429), calls refused, calls made twice (calls
with a tag minus distinct tags: every request has its own tag, so any repeat is a call wasted
at a seam or a deadline), the longest time the API saw no call, and billed invocation-seconds
per hour (each invocation from its process's spawn to its handler's return, or to its kill:
init included, as AWS bills it since August 2025).

Not a test: pytest does not collect it. Postgres: TEST_DATABASE_URL, else the local server
(a database `coc_bench_schedule` is dropped and created for each run); Redis: TEST_REDIS_URL,
else the local server (db 13 is flushed for each run).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from bench.report import (  # noqa: E402
    claimed_redis_db,
    describe_machine,
    flush_keeping_claim,
    provenance,
    write_keeping_notes,
)
from coclib.keys import QueueKeys  # noqa: E402
from coclib.migrations import migrate  # noqa: E402
from coclib.queue import RefreshRequest, encode  # noqa: E402
from coclib.settings import DEFAULT_QUEUE_KEY  # noqa: E402
from coclib.testing.services import LOCAL_POSTGRES, LOCAL_REDIS, create_database  # noqa: E402
from coclib.testing.simulator import CocApiSimulator, SimulatorThread  # noqa: E402
from coclib.testing.simulator.calls import max_calls_in_window, tightest_span  # noqa: E402
from coclib.testing.tags import numbered_tag  # noqa: E402

DB_NAME = "coc_bench_schedule"
TOKEN = "bench-token"
LIMIT = 30.0
LATENCY = (0.1, 0.3)
MODES = ("before", "hand-over")
TARGETS = {"compressed": 0.95, "real": 0.97, "billed": 1.1}
TIMED_OUT = "killed at the timeout"
NOTES_MARKER = "<!-- analysis: written by hand; schedule_bench.py keeps everything below this line -->"

# One invocation: a cold interpreter, the handler module imported as Lambda imports it, one
# event, the summary on stdout. The context counts down from the fire time, so the init phase
# counts against the timeout as it does on Lambda.
INVOCATION = r"""
import json, os, sys, time
fired, timeout, event_kind = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
sys.path.insert(0, os.environ["BENCH_ROOT"])
from coclib.testing.lambda_context import LambdaContext, scheduled_event
context = LambdaContext(timeout_seconds=timeout - (time.time() - fired))
from worker import lambda_function
event = scheduled_event() if event_kind == "scheduled" else {"action": "drain"}
try:
    answer = lambda_function.lambda_handler(event, context)
except Exception as exc:
    answer = {"stopped": "raised", "detail": repr(exc)}
returned = time.time()
print("RESULT " + json.dumps({"returned": returned, "stopped": answer.get("stopped")}), flush=True)
lambda_function.shutdown()
"""


@dataclass
class Invocation:
    fired: float
    proc: subprocess.Popen
    log: Path
    ended: float | None = None  # the handler returned, or the process was killed
    stopped: str = "no summary"  # the summary's `stopped`, or why the process was killed


@dataclass
class Outcome:
    """What one schedule in one mode did, as the API and the invocations saw it."""

    mode: str
    period: float
    timeout: float
    seconds: float
    calls: int = 0
    distinct: int = 0
    throttled: int = 0
    busiest_second: int = 0
    tightest_span: float | None = None
    longest_silence: float = 0.0
    silences_over_1s: int = 0
    billed: float = 0.0
    invocations: int = 0
    killed: int = 0
    stopped: dict[str, int] = field(default_factory=dict)

    @property
    def calls_ratio(self) -> float:
        return self.calls / self.seconds / LIMIT

    @property
    def requests_ratio(self) -> float:
        return self.distinct / self.seconds / LIMIT

    @property
    def twice(self) -> int:
        return self.calls - self.distinct

    @property
    def billed_per_hour(self) -> float:
        return self.billed / self.seconds * 3600

    @property
    def billed_ratio(self) -> float:
        return self.billed / self.seconds


def _backlog(client: redis.Redis, queue: str, n: int) -> None:
    kinds = ("player", "clan", "war")
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        request = RefreshRequest(
            uuid.uuid4().hex, kinds[i % 3], numbered_tag(i + 14**5, lead="Y"), time.time()
        )
        pipe.rpush(queue, encode(request))
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def _spawn(
    fired: float, period: float, timeout: float, mode: str, env: dict[str, str], logs: Path, n: int
) -> Invocation:
    log = logs / f"{mode}-every-{period:g}s-{n:04d}.log"
    event_kind = "scheduled" if mode == "hand-over" else "drain"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", INVOCATION, repr(fired), repr(timeout), event_kind],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Invocation(fired, proc, log)


def _kill(inv: Invocation, at: float, why: str) -> None:
    inv.proc.kill()
    inv.ended, inv.stopped = at, why


def _finish(inv: Invocation) -> None:
    for line in inv.log.read_text(errors="replace").splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[7:])
            inv.ended, inv.stopped = result["returned"], result["stopped"]


def _run(
    mode: str, period: float, timeout: float, minutes: float, admin: str, redis_url: str, logs: Path
) -> Outcome:
    seconds = minutes * 60
    db_url = create_database(admin, DB_NAME)
    migrate(db_url)
    client = redis.Redis.from_url(redis_url)
    flush_keeping_claim(client)  # never another session's db: claimed in main()
    _backlog(client, QueueKeys(DEFAULT_QUEUE_KEY).queue, int(LIMIT * seconds) + 2000)
    outcome = Outcome(mode, period, timeout, seconds)
    invocations: list[Invocation] = []
    with SimulatorThread(CocApiSimulator(tokens=(TOKEN,), latency=LATENCY, rate_limit=LIMIT)) as sim:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "COC_"))}
        env.update(
            BENCH_ROOT=str(ROOT),
            DATABASE_URL=db_url,
            REDIS_URL=redis_url,
            COC_API_BASE_URL=sim.base_url,
            COC_API_TOKENS=TOKEN,
            COC_REQS_PER_SEC=f"{LIMIT:g}",
            ENVIRONMENT="development",
            LOG_LEVEL="INFO",
        )
        start = time.time()
        end = start + seconds
        fires = 0
        while (now := time.time()) < end:
            if now >= start + fires * period:
                invocations.append(_spawn(now, period, timeout, mode, env, logs, fires))
                fires += 1
            for inv in invocations:
                if inv.ended is None and inv.proc.poll() is None and now >= inv.fired + timeout:
                    _kill(inv, now, TIMED_OUT)  # as Lambda does at the timeout
            time.sleep(min(0.05, max(0.0, start + fires * period - time.time())))
        for inv in invocations:
            if inv.ended is None and inv.proc.poll() is None:
                _kill(inv, end, "running at the window's end")  # billed up to here
            inv.proc.wait()
            if inv.ended is None:
                _finish(inv)
        arrivals = [c for c in sim.calls if c.tag is not None and start <= c.at < end]
    client.close()

    times = [c.at for c in arrivals]
    outcome.calls = len(arrivals)
    outcome.distinct = len({c.tag for c in arrivals})
    outcome.throttled = sum(1 for c in arrivals if c.status == 429)
    outcome.busiest_second = max_calls_in_window(times, 1.0)
    outcome.tightest_span = tightest_span(times, math.floor(LIMIT) + 1)
    edges = [start, *sorted(times), end]
    silences = [b - a for a, b in itertools.pairwise(edges)]
    outcome.longest_silence = max(silences)
    outcome.silences_over_1s = sum(1 for s in silences if s > 1.0)
    outcome.invocations = len(invocations)
    outcome.killed = sum(1 for inv in invocations if inv.stopped == TIMED_OUT)
    outcome.billed = sum(min(inv.ended or end, end) - inv.fired for inv in invocations)
    outcome.stopped = dict(collections.Counter(inv.stopped for inv in invocations))
    return outcome


def _label(period: float, timeout: float) -> str:
    return "compressed" if timeout < 300 else "real"


def _report(outcomes: list[Outcome], machine: dict[str, str], command: str) -> str:
    def fmt(o: Outcome, key: str) -> str:
        span = "none" if o.tightest_span is None else f"{o.tightest_span:.3f} s"
        return {
            "calls": f"{o.calls_ratio:.3f} ({o.calls / o.seconds:.2f}/s)",
            "requests": f"{o.requests_ratio:.3f}",
            "busiest": str(o.busiest_second),
            "span": span,
            "throttled": str(o.throttled),
            "twice": str(o.twice),
            "silence": f"{o.longest_silence:.2f} s ({o.silences_over_1s} over 1 s)",
            "billed": f"{o.billed_per_hour:,.0f} ({o.billed_ratio:.3f} x wall)",
            "invocations": f"{o.invocations} ({o.killed} killed at the timeout)"
            if o.killed
            else str(o.invocations),
            "stopped": ", ".join(f"{k} {v}" for k, v in sorted(o.stopped.items())),
        }[key]

    rows = [
        ("calls per second / limit", "calls", lambda o: f"≥ {TARGETS[_label(o.period, o.timeout)]}"),
        ("distinct requests per second / limit", "requests", lambda o: ""),
        ("busiest second the API saw", "busiest", lambda o: f"≤ {LIMIT:g}"),
        (f"tightest span of {math.floor(LIMIT) + 1} consecutive calls", "span", lambda o: "≥ 1 s"),
        ("calls refused with 429", "throttled", lambda o: "0"),
        ("calls made twice", "twice", lambda o: "deadlines only"),
        ("longest time without a call", "silence", lambda o: ""),
        ("billed invocation-seconds per hour", "billed", lambda o: f"≤ {TARGETS['billed']} x wall"),
        ("invocations", "invocations", lambda o: ""),
        ("how they stopped", "stopped", lambda o: ""),
    ]
    schedules: dict[tuple[float, float, float], list[Outcome]] = {}
    for o in outcomes:
        schedules.setdefault((o.period, o.timeout, o.seconds), []).append(o)
    sections = []
    for (period, timeout, seconds), pair in schedules.items():
        header = [
            f"## Every {period:g} s, timeout {timeout:g} s, {seconds / 60:g} min ({_label(period, timeout)})",
            "",
        ]
        table = ["| | " + " | ".join(o.mode for o in pair) + " | target (hand-over) |"]
        table.append("| --- |" + " ---: |" * len(pair) + " --- |")
        after = next((o for o in pair if o.mode == "hand-over"), pair[-1])
        for name, key, target in rows:
            table.append(f"| {name} | " + " | ".join(fmt(o, key) for o in pair) + f" | {target(after)} |")
        sections += header + table + [""]
    return "\n".join(
        [
            "# Schedule benchmark",
            "",
            "Scheduled invocations against a backlog that never runs out, each a fresh process with a",
            "Lambda-like timeout, overlapping as on Lambda; the simulator answers in 100-300 ms and",
            f"refuses the {math.floor(LIMIT) + 1}st call in any second with a 429. `before` is the same code",
            "driven by events that never take over (how scheduled runs behaved before hand-over);",
            "`hand-over` is the scheduled event. Written by `bench/schedule_bench.py` (its docstring",
            "says how each figure is measured); regenerate with:",
            "",
            *provenance(command, machine),
            "",
            *sections,
        ]
    )


def _schedule(text: str) -> tuple[float, float, float]:
    try:
        period, timeout, minutes = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("a schedule is PERIOD,TIMEOUT,MINUTES, e.g. 120,300,20") from None
    if not (period > 0 and timeout > 6 and minutes > 0):
        raise argparse.ArgumentTypeError("PERIOD and MINUTES must be positive and TIMEOUT above 6 s")
    return period, timeout, minutes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--schedule", type=_schedule, action="append", help="PERIOD,TIMEOUT,MINUTES (repeatable)"
    )
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    parser.add_argument("--out", default=str(ROOT / "bench" / "schedule.md"), help="'-' prints only")
    parser.add_argument(
        "--logs", type=Path, help="keep each invocation's output here (default: a temporary folder)"
    )
    args = parser.parse_args()
    schedules = args.schedule or [(24.0, 60.0, 6.0), (120.0, 300.0, 20.0)]
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes takes {', '.join(MODES)}")

    command = "python bench/schedule_bench.py " + " ".join(sys.argv[1:])
    machine = describe_machine()
    admin = os.environ.get("TEST_DATABASE_URL") or LOCAL_POSTGRES
    logs = args.logs or Path(tempfile.mkdtemp(prefix="schedule-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    outcomes = []
    with claimed_redis_db(os.environ.get("TEST_REDIS_URL") or LOCAL_REDIS, "schedule-bench") as redis_url:
        for period, timeout, minutes in schedules:
            for mode in modes:
                print(
                    f"{mode}: every {period:g} s, timeout {timeout:g} s, {minutes:g} min ...",
                    file=sys.stderr,
                    flush=True,
                )
                outcome = _run(mode, period, timeout, minutes, admin, redis_url, logs)
                print(
                    json.dumps(outcome.__dict__ | {"calls_ratio": outcome.calls_ratio}),
                    file=sys.stderr,
                    flush=True,
                )
                outcomes.append(outcome)
    report = _report(outcomes, machine, command.strip())
    print(report)
    print(f"invocation logs: {logs}", file=sys.stderr)
    if args.out != "-":
        write_keeping_notes(Path(args.out), report, NOTES_MARKER)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
