"""Priority lane and linger: how soon a refresh someone waits for lands, and what it costs.

    python bench/priority_bench.py                          # every scenario, writes bench/priority.md
    python bench/priority_bench.py --scenarios idle --out -  # a quick look at one

Scheduled invocations as in `bench/schedule_bench.py` (each a fresh `python -I` process with a
Lambda-like context, an EventBridge scheduled event, overlapping and killed at the timeout as on
Lambda), on its compressed schedule: every 24 s, timeout 60 s, linger 24 s (the period: one
drainer always there, as 120 s is on the real 2-minute schedule) or 0. The simulator runs in
this process at 100-300 ms per call with its 429 at the 30/s limit. Scenarios:

* `load`: a standing backlog of 20,000 in the queue; priority requests pushed at 4/s (each with
  `enqueue(..., priority=True)`, each a different tag) from the moment the API sees the first
  call until 5 s before the window ends; linger on. `load-off`: the same with linger 0, for
  the billed seconds (the backlog never empties, so linger changes nothing else).
* `idle`: both lanes empty; priority requests at 1/s from 5 s after the first invocation is
  fired; linger on. `idle-off`: the same with linger 0.
* `quiet`, `quiet-off`: both lanes empty and nothing pushed: the billed seconds of an idle hour.
* `flood`: 3,000 requests waiting in the queue and 3,000 in the priority lane; linger on.

Measured over the window [first fire, first fire + MINUTES): enqueue -> settled per priority
request (the producer's clock before `enqueue` to the `occurred_at` of its settling ledger row;
requests not settled when the window ends are counted apart), the API's calls per second
against the limit and its busiest second (the simulator's clock), the queue's share of the calls
(by tag: each lane's tags have their own lead letter), and billed invocation-seconds per hour
(each invocation from its process's spawn to its handler's return or its kill).

Not a test: pytest does not collect it. Postgres: TEST_DATABASE_URL, else the local server
(a database `coc_bench_priority` is dropped and created for each scenario); Redis:
TEST_REDIS_URL, else the local server: a db no test session or bench has claimed (claimed
the way tests/conftest.py claims one), flushed for each scenario.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
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
from bench.schedule_bench import TIMED_OUT, Invocation, _finish, _kill, _spawn  # noqa: E402
from coclib.keys import QueueKeys  # noqa: E402
from coclib.migrations import migrate  # noqa: E402
from coclib.queue import RefreshRequest, encode, enqueue  # noqa: E402
from coclib.settings import DEFAULT_QUEUE_KEY  # noqa: E402
from coclib.testing.services import LOCAL_POSTGRES, LOCAL_REDIS, create_database  # noqa: E402
from coclib.testing.simulator import CocApiSimulator, SimulatorThread  # noqa: E402
from coclib.testing.simulator.calls import max_calls_in_window  # noqa: E402
from coclib.testing.tags import numbered_tag  # noqa: E402

DB_NAME = "coc_bench_priority"
# A Redis db is claimed as the test sessions claim theirs (tests/conftest.py): a key in it, set
# only if absent, so a bench never flushes a db a test session or another bench is using.
TOKEN = "bench-token"
LIMIT = 30.0
LATENCY = (0.1, 0.3)
PERIOD, TIMEOUT = 24.0, 60.0
QUEUE_LEAD, PRIORITY_LEAD = "Y", "Q"  # tags of the queue's requests and of the priority lane's


@dataclass(frozen=True)
class Scenario:
    name: str
    queue: int  # requests waiting in the queue at the start
    priority: int  # requests waiting in the priority lane at the start
    rate: float  # priority requests pushed per second during the window
    linger: float
    minutes: float
    warmup: str = "first call"  # when pushing starts: "first call", or seconds after the first fire


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("load", 20_000, 0, 4.0, PERIOD, 3.0),
        Scenario("load-off", 20_000, 0, 0.0, 0.0, 2.0),
        Scenario("idle", 0, 0, 1.0, PERIOD, 3.0, warmup="5"),
        Scenario("idle-off", 0, 0, 1.0, 0.0, 3.0, warmup="5"),
        Scenario("quiet", 0, 0, 0.0, PERIOD, 2.0),
        Scenario("quiet-off", 0, 0, 0.0, 0.0, 2.0),
        Scenario("flood", 3_000, 3_000, 0.0, PERIOD, 1.5),
    )
}


@dataclass
class Result:
    scenario: Scenario
    seconds: float
    latencies: list[float] = field(default_factory=list)
    unsettled: int = 0
    pushed: int = 0
    calls: int = 0
    queue_calls: int = 0
    busiest_second: int = 0
    throttled: int = 0
    billed: float = 0.0
    invocations: int = 0
    stopped: dict[str, int] = field(default_factory=dict)

    def percentile(self, p: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(p * len(ordered)) - 1)]

    @property
    def billed_per_hour(self) -> float:
        return self.billed / self.seconds * 3600


def _fill(client: redis.Redis, key: str, n: int, lead: str) -> None:
    pipe = client.pipeline(transaction=False)
    kinds = ("player", "clan", "war")
    for i in range(n):
        request = RefreshRequest(
            uuid.uuid4().hex, kinds[i % 3], numbered_tag(i + 14**5, lead=lead), time.time()
        )
        pipe.rpush(key, encode(request))
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


class Producer(threading.Thread):
    """Pushes priority requests at `rate` per second, each a new tag; notes when each was pushed."""

    def __init__(self, redis_url: str, keys: QueueKeys, rate: float, start_at, stop_at: float) -> None:
        super().__init__(daemon=True)
        self.redis_url, self.keys, self.rate = redis_url, keys, rate
        self.start_at, self.stop_at = start_at, stop_at
        self.pushed: dict[str, float] = {}

    def run(self) -> None:
        client = redis.Redis.from_url(self.redis_url)
        while (begin := self.start_at()) is None:
            time.sleep(0.01)
        n = 0
        while (due := begin + n / self.rate) < self.stop_at:
            time.sleep(max(0.0, due - time.time()))
            pushed = time.time()
            request_id = enqueue(
                client, "player", numbered_tag(n + 14**5, lead=PRIORITY_LEAD), keys=self.keys, priority=True
            )
            if request_id:
                self.pushed[request_id] = pushed
            n += 1
        client.close()


def _run(scenario: Scenario, admin: str, redis_url: str, logs: Path) -> Result:
    seconds = scenario.minutes * 60
    db_url = create_database(admin, DB_NAME)
    migrate(db_url)
    client = redis.Redis.from_url(redis_url)
    flush_keeping_claim(client)
    keys = QueueKeys(DEFAULT_QUEUE_KEY)
    _fill(client, keys.queue, scenario.queue, QUEUE_LEAD)
    _fill(client, keys.priority, scenario.priority, PRIORITY_LEAD)
    result = Result(scenario, seconds)
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
            DRAIN_LINGER_SECONDS=f"{scenario.linger:g}",
            ENVIRONMENT="development",
            LOG_LEVEL="INFO",
        )
        start = time.time()
        end = start + seconds

        def start_at() -> float | None:
            if scenario.warmup == "first call":
                return sim.calls[0].at if sim.calls else None
            return start + float(scenario.warmup)

        producer = None
        if scenario.rate:
            producer = Producer(redis_url, keys, scenario.rate, start_at, end - 5.0)
            producer.start()
        fires = 0
        while (now := time.time()) < end:
            if now >= start + fires * PERIOD:
                invocations.append(_spawn(now, PERIOD, TIMEOUT, "hand-over", env, logs, fires))
                fires += 1
            for inv in invocations:
                if inv.ended is None and inv.proc.poll() is None and now >= inv.fired + TIMEOUT:
                    _kill(inv, now, TIMED_OUT)
            time.sleep(min(0.05, max(0.0, start + fires * PERIOD - time.time())))
        for inv in invocations:
            if inv.ended is None and inv.proc.poll() is None:
                _kill(inv, end, "running at the window's end")
            inv.proc.wait()
            if inv.ended is None:
                _finish(inv)
        arrivals = [c for c in sim.calls if c.tag is not None and start <= c.at < end]
        if producer is not None:
            producer.join()
    client.close()

    if producer is not None:
        result.pushed = len(producer.pushed)
        with psycopg.connect(db_url) as conn:
            settled = dict(
                conn.execute(
                    "SELECT request_id, min(extract(epoch FROM occurred_at))::float8 FROM refresh_ledger"
                    " WHERE outcome IN ('fetched', 'failed', 'skipped-fresh') AND request_id = ANY(%s)"
                    " GROUP BY request_id",
                    (list(producer.pushed),),
                ).fetchall()
            )
        for request_id, pushed in producer.pushed.items():
            if request_id in settled and settled[request_id] < end:
                result.latencies.append(settled[request_id] - pushed)
            else:
                result.unsettled += 1
    times = [c.at for c in arrivals]
    result.calls = len(arrivals)
    result.queue_calls = sum(1 for c in arrivals if c.tag.startswith("#" + QUEUE_LEAD))
    result.busiest_second = max_calls_in_window(times, 1.0)
    result.throttled = sum(1 for c in arrivals if c.status == 429)
    result.invocations = len(invocations)
    result.billed = sum(min(inv.ended or end, end) - inv.fired for inv in invocations)
    stopped: dict[str, int] = {}
    for inv in invocations:
        stopped[inv.stopped] = stopped.get(inv.stopped, 0) + 1
    result.stopped = stopped
    return result


def _row(r: Result) -> str:
    def s(x: float | None) -> str:
        return "—" if x is None else f"{x:.2f} s"

    s_ = r.scenario
    latency = (
        f"{s(r.percentile(0.5))} / {s(r.percentile(0.95))} / {s(max(r.latencies) if r.latencies else None)}"
        if r.pushed
        else "—"
    )
    share = f"{r.queue_calls / r.calls:.3f}" if r.calls and s_.queue and (s_.priority or s_.rate) else "—"
    return (
        f"| `{s_.name}` | {s_.queue:,} + {s_.priority:,} | {s_.rate:g}/s | {s_.linger:g} s "
        f"| {s_.minutes:g} min | {r.pushed} ({r.unsettled} unsettled) | {latency} "
        f"| {r.calls / r.seconds / LIMIT:.3f} | {r.busiest_second} | {r.throttled} | {share} "
        f"| {r.billed_per_hour:,.0f} ({r.billed / r.seconds:.3f} x wall) "
        f"| {r.invocations}: {', '.join(f'{k} {v}' for k, v in sorted(r.stopped.items()))} |"
    )


def _report(results: list[Result], machine: dict[str, str], command: str) -> str:
    return "\n".join(
        [
            "# Priority lane and linger benchmark",
            "",
            f"Scheduled invocations every {PERIOD:g} s (timeout {TIMEOUT:g} s), each a fresh process; the",
            "simulator answers in 100-300 ms and refuses the 31st call in any second. Written by",
            "`bench/priority_bench.py` (its docstring says how each figure is measured); regenerate with:",
            "",
            *provenance(command, machine),
            "",
            "| scenario | waiting at start (queue + priority) | priority pushed | linger | window "
            "| priority requests | enqueue → settled p50 / p95 / max | calls / limit | busiest second "
            "| 429s | queue's share of calls | billed invocation-s per hour "
            "| invocations: how they stopped |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
            *[_row(r) for r in results],
            "",
        ]
    )


NOTES_MARKER = "<!-- analysis: written by hand; priority_bench.py keeps everything below this line -->"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: " + ", ".join(SCENARIOS)
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "priority.md"), help="'-' prints only")
    parser.add_argument("--logs", type=Path, help="keep each invocation's output here")
    args = parser.parse_args()
    names = [n for n in args.scenarios.split(",") if n]
    if not names or set(names) - set(SCENARIOS):
        parser.error(f"--scenarios takes {', '.join(SCENARIOS)}")
    command = "python bench/priority_bench.py " + " ".join(sys.argv[1:])
    machine = describe_machine()
    admin = os.environ.get("TEST_DATABASE_URL") or LOCAL_POSTGRES
    logs = args.logs or Path(tempfile.mkdtemp(prefix="priority-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    results = []
    with claimed_redis_db(os.environ.get("TEST_REDIS_URL") or LOCAL_REDIS, "priority-bench") as redis_url:
        for name in names:
            print(f"{name} ...", file=sys.stderr, flush=True)
            (logs / name).mkdir(exist_ok=True)
            result = _run(SCENARIOS[name], admin, redis_url, logs / name)
            print(_row(result), file=sys.stderr, flush=True)
            results.append(result)
    report = _report(results, machine, command.strip())
    print(report)
    print(f"invocation logs: {logs}", file=sys.stderr)
    if args.out != "-":
        write_keeping_notes(Path(args.out), report, NOTES_MARKER)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
