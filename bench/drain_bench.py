"""Benchmark the drain against a naive one-at-a-time loop, through the API simulator.

    python bench/drain_bench.py                        # 3,000 requests at 30/s; writes bench/drain.md
    python bench/drain_bench.py --requests 600 --out -  # a quick look, printed only

Both contenders run in a child process of their own (so CPU time and peak RSS are theirs
alone), against a scratch database (`coc_bench_drain`, dropped first, real migrations) and a
queue key of their own in Redis, and a simulator process of their own
(`python -m coclib.testing.simulator --latency 0.1,0.3 --rate-limit 30 ...`: uniform 100-300 ms
latency per call, and it answers 429 if it ever sees more than the limit in a second, which
would open the worker's circuit and show in the results). When it stops, the simulator says
what it saw: the most calls in any one second and the tightest span of limit + 1 consecutive
calls, on its own clock (the headroom the limiter's margin leaves).

* worker: `worker.runtime.Worker(settings).drain()`, the code the Lambda handler runs, default
  `DrainPolicy`, draining a backlog of `--requests` (players, clans and current wars in equal
  thirds, every tag different, so the simulator cannot serve from its body cache).
* naive: `bench/naive_loop.py`, the seed's design read literally (LMOVE one item, `attempted`
  row and commit, fetch with coc.py, upsert and outcome row and commit, acknowledge, repeat),
  bounded to `--naive-requests` or `--naive-seconds`; its time for the full backlog is
  extrapolated from its rate.

Measured in the child: wall time and `time.process_time()` around the drain only (the
interpreter's start and imports excluded; ledger and snapshot writes included), statements
sent to Postgres (`Database.round_trips`; each transaction adds a BEGIN, a COMMIT and the
pool's connection check), peak RSS (`resource.getrusage(...).ru_maxrss`, the whole process).
Measured by the parent: what the ledger holds afterwards (every request must end `fetched`).

Not a test: pytest does not collect it. Postgres: TEST_DATABASE_URL, else the local server;
Redis: TEST_REDIS_URL, else the local server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402

from bench.report import describe_machine, provenance, write_keeping_notes  # noqa: E402
from coclib.keys import QueueKeys  # noqa: E402
from coclib.migrations import migrate  # noqa: E402
from coclib.queue import RefreshRequest, encode  # noqa: E402
from coclib.settings import Settings  # noqa: E402
from coclib.testing.services import LOCAL_POSTGRES, LOCAL_REDIS, create_database  # noqa: E402
from coclib.testing.tags import numbered_tag  # noqa: E402

DB_NAME = "coc_bench_drain"
TOKEN = "bench-token"
TARGETS = {"rate": 0.97, "cpu_ms": 1.5, "rss_mb": 150.0}
NOTES_MARKER = "<!-- analysis: written by hand; drain_bench.py keeps everything below this line -->"


def _tag(n: int) -> str:
    return numbered_tag(n + 14**5, lead="Y")  # at least six digits after the leading one


# -- children ----------------------------------------------------------------------------------


def _count_transactions() -> dict[str, int]:
    """Count `Database.transaction()` entries: each is a pool checkout (with its connection
    check), a BEGIN and a COMMIT on top of the statements it runs."""
    from coclib.db import Database

    counter = {"transactions": 0}
    original = Database.transaction

    def transaction(self, *a, **kw):
        counter["transactions"] += 1
        return original(self, *a, **kw)

    Database.transaction = transaction
    return counter


def _rusage() -> resource.struct_rusage:
    return resource.getrusage(resource.RUSAGE_SELF)


def _child(kind: str, args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    if args.uvloop:
        import uvloop  # an experiment: not a dependency of the project

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    counter = _count_transactions()
    if kind == "worker":
        from worker.runtime import Worker

        async def go() -> dict[str, Any]:
            worker = Worker(settings)
            try:
                t0, c0, r0 = time.perf_counter(), time.process_time(), _rusage()
                summary = await worker.drain(args.budget)
                wall, cpu, r1 = time.perf_counter() - t0, time.process_time() - c0, _rusage()
                db = await worker.db()
                return {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "statements": db.round_trips,
                    "user_s": r1.ru_utime - r0.ru_utime,
                    "sys_s": r1.ru_stime - r0.ru_stime,
                    "processed": summary.processed_requests,
                    "api_calls": summary.api_requests,
                    "stopped": summary.stopped,
                    "cause": summary.cause,
                    "counts": {str(k): v for k, v in summary.counts.items()},
                }
            finally:
                await worker.close()

    else:
        from bench.naive_loop import naive_drain

        async def go() -> dict[str, Any]:
            t0, c0, r0 = time.perf_counter(), time.process_time(), _rusage()
            result = await naive_drain(
                settings, max_requests=args.naive_requests, max_seconds=args.naive_seconds
            )
            wall, cpu, r1 = time.perf_counter() - t0, time.process_time() - c0, _rusage()
            return {
                "wall_s": wall,
                "cpu_s": cpu,
                "statements": result.db_round_trips,
                "user_s": r1.ru_utime - r0.ru_utime,
                "sys_s": r1.ru_stime - r0.ru_stime,
                "processed": result.processed,
                "api_calls": result.api_calls,
                "stopped": result.stopped,
                "counts": {"fetched": result.fetched},
            }

    if args.profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)  # CPU time, not waits
        result = profiler.runcall(asyncio.run, go())
        profiler.dump_stats(f"{args.profile}.{kind}.prof")
    else:
        result = asyncio.run(go())
    result["transactions"] = counter["transactions"]
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


# -- the parent --------------------------------------------------------------------------------


def _start_simulator(latency: str, rate: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coclib.testing.simulator",
            "--port",
            "0",
            "--latency",
            latency,
            "--tokens",
            TOKEN,
            "--rate-limit",
            str(int(rate)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    match = re.search(r"base_url=(\S+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"the simulator did not start: {line!r}")
    return proc, match.group(1)


def _stop_simulator(proc: subprocess.Popen) -> dict[str, str]:
    """Stop the simulator; what it saw, from its last line (`key=value` pairs)."""
    proc.terminate()
    rest, _ = proc.communicate(timeout=10)
    line = next((x for x in reversed(rest.splitlines()) if x.startswith("CoC API simulator stopped:")), "")
    return dict(pair.split("=", 1) for pair in line.split(":", 1)[-1].split() if "=" in pair)


def _enqueue(client: redis.Redis, keys: QueueKeys, n: int, offset: int) -> list[str]:
    kinds = ("player", "clan", "war")
    ids, pipe = [], client.pipeline(transaction=False)
    for i in range(n):
        request = RefreshRequest(uuid.uuid4().hex, kinds[i % 3], _tag(offset + i), time.time())
        ids.append(request.id)
        pipe.rpush(keys.queue, encode(request))
    pipe.execute()
    return ids


def _contender(
    name: str, n: int, args, env: dict[str, str], db_url: str, client: redis.Redis
) -> dict[str, Any]:
    keys = QueueKeys(f"{{coc:bench:{name}:{os.getpid()}}}:queue")
    ids = _enqueue(client, keys, n, offset=0 if name == "worker" else 10**6)
    # A simulator of its own, so what it saw (calls per second, 429s) is this contender's.
    sim, base_url = _start_simulator(args.latency, args.rate)
    child_env = {**env, "REFRESH_QUEUE_KEY": keys.queue, "COC_API_BASE_URL": base_url}
    print(f"{name}: draining {n} requests ...", file=sys.stderr, flush=True)
    prefix = args.child_prefix.format(name=name).split() if args.child_prefix else []
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, str(Path(__file__).resolve()), "--child", name, *sys.argv[1:]],
            cwd=ROOT,
            env=child_env,
            capture_output=True,
            text=True,
        )
    finally:
        seen = _stop_simulator(sim)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    with psycopg.connect(db_url) as conn:
        outcome = dict(
            conn.execute(
                "SELECT outcome, count(*) FROM refresh_ledger WHERE request_id = ANY(%s) GROUP BY outcome",
                (ids,),
            ).fetchall()
        )
    result["ledger"] = outcome
    result["api_seen"] = seen
    result["left_in_queue"] = client.llen(keys.queue) + client.llen(keys.inflight)
    client.delete(keys.queue, keys.inflight, keys.lease)
    result["requests"] = n
    return result


def _span(seen: dict[str, str], limit: float) -> str:
    value = seen.get(f"tightest_span_of_{math.floor(limit) + 1}_calls_s", "?")
    return value if value in ("?", "none") else f"{float(value):.3f} s"


def _report(args, results: dict[str, dict[str, Any]], machine: dict[str, str], command: str) -> str:
    limit = args.rate
    full = args.requests

    def derived(r: dict[str, Any]) -> dict[str, float]:
        n = r["processed"]
        rate = n / r["wall_s"] if r["wall_s"] else 0.0
        return {
            "rate": rate,
            "rate_ratio": rate / limit,
            "cpu_ms": 1000 * r["cpu_s"] / n if n else float("nan"),
            "user_ms": 1000 * r["user_s"] / n if n else float("nan"),
            "sys_ms": 1000 * r["sys_s"] / n if n else float("nan"),
            "statements": r["statements"] / n if n else float("nan"),
            "xacts": r["transactions"] / n if n else float("nan"),
            "trips": (r["statements"] + 3 * r["transactions"]) / n if n else float("nan"),
            "full_s": full / rate if rate else float("inf"),
        }

    w, nv = results["worker"], results["naive"]
    dw, dn = derived(w), derived(nv)

    def ok(value: float, target: float, higher: bool) -> str:
        good = value >= target if higher else value <= target
        return "met" if good else "**missed**"

    rows = [
        (
            "requests drained",
            f"{w['processed']:,} of {w['requests']:,}",
            f"{nv['processed']:,} (bounded)",
            "",
        ),
        ("stopped", w["stopped"], nv["stopped"], ""),
        ("wall time", f"{w['wall_s']:.1f} s", f"{nv['wall_s']:.1f} s", ""),
        (f"time for {full:,} requests", f"{dw['full_s']:.1f} s", f"{dn['full_s']:.0f} s (extrapolated)", ""),
        ("achieved rate", f"{dw['rate']:.2f}/s", f"{dn['rate']:.2f}/s", ""),
        (
            "rate / limit",
            f"{dw['rate_ratio']:.3f}",
            f"{dn['rate_ratio']:.3f}",
            f"≥ {TARGETS['rate']} ({ok(dw['rate_ratio'], TARGETS['rate'], True)})",
        ),
        (
            "CPU per request (worker process)",
            f"{dw['cpu_ms']:.2f} ms",
            f"{dn['cpu_ms']:.2f} ms",
            f"≤ {TARGETS['cpu_ms']} ms ({ok(dw['cpu_ms'], TARGETS['cpu_ms'], False)})",
        ),
        (
            "… of which user / system",
            f"{dw['user_ms']:.2f} / {dw['sys_ms']:.2f} ms",
            f"{dn['user_ms']:.2f} / {dn['sys_ms']:.2f} ms",
            "",
        ),
        ("Postgres statements per request", f"{dw['statements']:.3f}", f"{dn['statements']:.2f}", ""),
        ("Postgres transactions per request", f"{dw['xacts']:.3f}", f"{dn['xacts']:.2f}", ""),
        ("Postgres round trips per request", f"{dw['trips']:.3f}", f"{dn['trips']:.2f}", ""),
        (
            "most calls the API saw in any second",
            w["api_seen"].get("max_calls_in_any_second", "?"),
            nv["api_seen"].get("max_calls_in_any_second", "?"),
            f"≤ {limit:g}",
        ),
        (
            f"tightest span of {math.floor(limit) + 1} consecutive calls",
            _span(w["api_seen"], limit),
            _span(nv["api_seen"], limit),
            "≥ 1 s",
        ),
        (
            "calls refused with 429",
            w["api_seen"].get("throttled", "?"),
            nv["api_seen"].get("throttled", "?"),
            "0",
        ),
        (
            "peak RSS",
            f"{w['rss_mb']:.0f} MB",
            f"{nv['rss_mb']:.0f} MB",
            f"≤ {TARGETS['rss_mb']:.0f} MB ({ok(w['rss_mb'], TARGETS['rss_mb'], False)})",
        ),
    ]
    table = ["| | worker (`worker.drain`) | naive loop | target (worker) |", "| --- | ---: | ---: | --- |"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(
        [
            "# Drain benchmark",
            "",
            f"A backlog of {full:,} refresh requests (players, clans and current wars in equal thirds,",
            f"every tag different) drained through the CoC API simulator at COC_REQS_PER_SEC={limit:g},",
            f"the simulator in its own process with {args.latency.replace(',', '-')} s of uniform latency",
            f"per call and its 429 rate limit at {limit:g}/s. Written by `bench/drain_bench.py`;",
            "regenerate with:",
            "",
            *provenance(command, machine),
            "",
            "```",
            "$ free -h",
            machine["free"],
            "```",
            "",
            *table,
            "",
            f"Ledger afterwards, worker: {w['ledger']}; naive: {nv['ledger']}.",
            f"Items left in the queue or in-flight lists: worker {w['left_in_queue']},",
            f"naive {nv['left_in_queue']} (the naive run was bounded, so its backlog is left over",
            "by design). Worker run summary counts:",
            f"{w['counts']}; API calls {w['api_calls']}.",
            "",
            "How each figure is measured:",
            "",
            "* rate: requests settled / wall time of the drain call (start-up, login and the last",
            "  response's latency included); the naive loop's time for the whole backlog is its rate",
            "  extrapolated, because it is bounded to "
            f"{args.naive_requests} requests or {args.naive_seconds:g} s.",
            "* CPU: `time.process_time()` of the child process around the drain call, divided by the",
            "  requests settled: coc.py and aiohttp, JSON parsing and `jsonb` encoding, the ledger and",
            "  snapshot writes, Redis. The interpreter's start and imports are not included.",
            "* calls the API saw: arrival times on the simulator's clock, in its own process; a",
            "  tightest span under 1 s means limit + 1 calls in one second, i.e. a 429.",
            "* statements: the `Database.round_trips` counter (one per statement sent).",
            "  Transactions: `Database.transaction()` entries, counted in the child. Each costs three",
            "  more round trips (the pool's connection check, BEGIN, COMMIT), so round trips =",
            "  statements + 3 x transactions.",
            "* peak RSS: `ru_maxrss` of the child process at the end (imports included).",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--naive-requests", type=int, default=300)
    parser.add_argument("--naive-seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--latency", default="0.1,0.3")
    parser.add_argument("--budget", type=float, default=600.0, help="the worker's drain deadline, seconds")
    parser.add_argument("--out", default=str(ROOT / "bench" / "drain.md"), help="'-' prints only")
    parser.add_argument(
        "--profile",
        metavar="PREFIX",
        help="run each child under cProfile and write PREFIX.worker.prof, PREFIX.naive.prof",
    )
    parser.add_argument(
        "--uvloop",
        action="store_true",
        help="run the children on uvloop (must be importable; not a project dependency)",
    )
    parser.add_argument(
        "--child-prefix",
        metavar="CMD",
        help="run each child under CMD ({name}: worker or naive), "
        "e.g. 'py-spy record -o {name}.txt --format raw --'",
    )
    parser.add_argument("--child", choices=("worker", "naive"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args)
        return

    command = "python bench/drain_bench.py " + " ".join(sys.argv[1:])
    machine = describe_machine()
    admin = os.environ.get("TEST_DATABASE_URL") or LOCAL_POSTGRES
    redis_url = os.environ.get("TEST_REDIS_URL") or LOCAL_REDIS
    db_url = create_database(admin, DB_NAME)
    migrate(db_url)
    client = redis.Redis.from_url(redis_url)
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "COC_API_TOKENS": TOKEN,
        "COC_REQS_PER_SEC": f"{args.rate:g}",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    try:
        results = {
            "worker": _contender("worker", args.requests, args, env, db_url, client),
            "naive": _contender("naive", args.naive_requests, args, env, db_url, client),
        }
    finally:
        client.close()
    report = _report(args, results, machine, command.strip())
    print(report)
    print(json.dumps(results, indent=2), file=sys.stderr)
    if args.out != "-":
        write_keeping_notes(Path(args.out), report, NOTES_MARKER)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
