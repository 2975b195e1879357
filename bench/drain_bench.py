"""Benchmark the drain (against a baseline checkout and a naive loop) through the API simulator.

    python bench/drain_bench.py --baseline ../main-at-start   # 3,000 and 6,000; writes bench/drain.md
    python bench/drain_bench.py --requests 600 --naive-requests 0 --out -   # a quick look, printed only

Every contender runs in a fresh child process of its own (so CPU time and peak RSS are its
alone, taken from `wait4`: the whole process, start-up included), against a scratch database
(`coc_bench_drain`, dropped first, real migrations), a queue key of its own in Redis, and a
simulator process of its own (`python -m coclib.testing.simulator --latency 0.1,0.3
--rate-limit 30 --player-bytes 23000`: uniform 100-300 ms latency per call, player bodies of
about 23 KB, and a 429 if it ever sees more than the limit in a second, which would open the
worker's circuit and show in the results). When it stops, the simulator says what it saw: the
most calls in any one second and the tightest span of limit + 1 consecutive calls, on its own
clock (the headroom the limiter's margin leaves).

* worker: `worker.runtime.Worker(settings).drain()`, the code the Lambda handler runs, default
  `DrainPolicy`, draining each backlog of `--requests` (`--kinds` in turn, players by default,
  every tag different, so the simulator cannot serve from its body cache).
* baseline (`--baseline DIR`): the same child, importing the code checked out at DIR instead
  (`git worktree add --detach DIR <commit>`), run just before the worker on the same backlog.
* naive: `bench/naive_loop.py`, the seed's design read literally (LMOVE one item, `attempted`
  row and commit, fetch with coc.py, upsert and outcome row and commit, acknowledge, repeat),
  bounded to `--naive-requests` or `--naive-seconds`; 0 requests leaves it out.

Measured in the child: wall time and `time.process_time()` around the drain only, statements
sent to Postgres (`Database.round_trips`) and the round trips around them (the pool's
connection checks, each transaction's BEGIN and COMMIT), Redis commands. Measured by the
parent: the child's user + system CPU and peak RSS (`os.wait4`), and what the ledger holds
afterwards (every request must end `fetched`).

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
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# A child runs the code of the checkout it is given (a baseline's, or this one).
sys.path.insert(0, os.environ.get("BENCH_CODE_ROOT", str(ROOT)))

if "--child" in sys.argv and sys.argv[sys.argv.index("--child") + 1 :][:1] == ["worker"]:
    # A worker child starts as a Lambda container does: by importing the handler's module, the
    # checkout's own `lambda_function.py`, and whatever it loads (and however it loads it).
    import lambda_function  # noqa: F401

from coclib.settings import Settings  # noqa: E402

if "--child" not in sys.argv:
    # The parent's tools. A child imports only what it measures (the worker, its settings), so
    # its whole-process CPU and memory are the worker's, not the harness's (these cost ~0.15 s).
    import psycopg
    import redis

    from bench.report import describe_machine, provenance, write_keeping_notes
    from coclib.keys import QueueKeys
    from coclib.migrations import migrate
    from coclib.queue import RefreshRequest, encode
    from coclib.testing.services import LOCAL_POSTGRES, LOCAL_REDIS, create_database
    from coclib.testing.tags import numbered_tag

DB_NAME = "coc_bench_drain"
TOKEN = "bench-token"
TARGETS = {"rate": 0.97, "cpu_ms": 1.5, "rss_mb": 100.0, "rss_growth_mb": 15.0}
NOTES_MARKER = "<!-- analysis: written by hand; drain_bench.py keeps everything below this line -->"


def _tag(n: int) -> str:
    return numbered_tag(n + 14**5, lead="Y")  # at least six digits after the leading one


# -- children ----------------------------------------------------------------------------------


def _count_round_trips() -> dict[str, int]:
    """Count what costs a round trip besides the statements `Database.round_trips` counts: the
    pool's connection checks, transactions (a BEGIN and a COMMIT each), and Redis commands.
    Counted in the drivers, so that the baseline's code is counted the same way as this
    checkout's."""
    import psycopg
    from psycopg_pool import AsyncConnectionPool
    from redis.asyncio import Redis

    counter = {"transactions": 0, "checks": 0, "redis": 0}
    transaction, check = psycopg.AsyncConnection.transaction, AsyncConnectionPool.check_connection
    command = Redis.execute_command

    def counted_transaction(self, *a, **kw):
        counter["transactions"] += 1
        return transaction(self, *a, **kw)

    async def counted_check(conn) -> None:
        counter["checks"] += 1
        await check(conn)

    async def counted_command(self, *args, **options):
        counter["redis"] += 1
        return await command(self, *args, **options)

    psycopg.AsyncConnection.transaction = counted_transaction
    AsyncConnectionPool.check_connection = staticmethod(counted_check)
    Redis.execute_command = counted_command
    return counter


def _gc_meter() -> dict[str, list[float]]:
    """CPU seconds spent in each garbage collection, by generation (`gc.callbacks`)."""
    import gc

    spent: dict[str, list[float]] = {"0": [], "1": [], "2": []}
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.process_time()
        else:
            spent[str(info["generation"])].append(time.process_time() - started[0])

    gc.callbacks.append(callback)
    if os.environ.get("BENCH_GC_THRESHOLD"):  # an experiment
        gc.set_threshold(*map(int, os.environ["BENCH_GC_THRESHOLD"].split(",")))
    return spent


def _rusage() -> resource.struct_rusage:
    return resource.getrusage(resource.RUSAGE_SELF)


def _child(kind: str, args: argparse.Namespace) -> None:
    imported = time.process_time()  # the interpreter's start and the imports
    settings = Settings.from_env()
    if args.uvloop:
        import uvloop  # an experiment: not a dependency of the project

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    counter = _count_round_trips()
    gc_spent = _gc_meter()
    if kind == "worker":
        from worker.runtime import Worker

        async def go() -> dict[str, Any]:
            worker = Worker(settings)
            if os.environ.get("BENCH_GC_FREEZE"):  # an experiment: freeze what start-up made
                import gc

                gc.freeze()
            try:
                t0, c0, r0 = time.perf_counter(), time.process_time(), _rusage()
                summary = await worker.drain(args.budget)
                wall, cpu, r1 = time.perf_counter() - t0, time.process_time() - c0, _rusage()
                db = await worker.db()
                return {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "before_drain_s": c0,
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
    result.update(counter)
    result["imported_s"], result["ended_s"] = imported, time.process_time()
    result["gc"] = {gen: [len(times), sum(times)] for gen, times in gc_spent.items()}
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


# -- the parent --------------------------------------------------------------------------------


def _start_simulator(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coclib.testing.simulator",
            "--port",
            "0",
            "--latency",
            args.latency,
            "--tokens",
            TOKEN,
            "--player-bytes",
            str(args.player_bytes),
            *([] if args.no_throttle else ["--rate-limit", str(int(args.rate))]),
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


def _enqueue(client: redis.Redis, keys: QueueKeys, n: int, offset: int, kinds: list[str]) -> list[str]:
    ids, pipe = [], client.pipeline(transaction=False)
    for i in range(n):
        request = RefreshRequest(uuid.uuid4().hex, kinds[i % len(kinds)], _tag(offset + i), time.time())
        ids.append(request.id)
        pipe.rpush(keys.queue, encode(request))
    pipe.execute()
    return ids


def _run_child(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str, Any]:
    """Run a child to its end; its exit status, output and resource usage (from wait4: the
    whole process, the interpreter's start and imports included)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), usage


def _compile_bytecode(code: Path) -> None:
    """Compile a checkout's own modules, as the Lambda zips ship them (package-lambda.sh), so a
    child's start-up costs what a cold start on Lambda costs. A machine that sets
    PYTHONDONTWRITEBYTECODE (this one does) would otherwise compile them from source in every
    child: about 40 ms of CPU, not the worker's."""
    targets = [str(code / name) for name in ("lambda_function.py", "worker", "coclib", "ledger", "sql")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *targets], cwd=code, check=True)


def _contender(
    name: str, code: Path, n: int, args, env: dict[str, str], db_url: str, client: redis.Redis
) -> dict[str, Any]:
    """Drain `n` requests in a fresh process running the code at `code` (a checkout)."""
    keys = QueueKeys(f"{{coc:bench:{name}:{os.getpid()}}}:queue")
    offsets = {"worker": 0, "baseline": 2 * 10**6, "naive": 10**6}
    ids = _enqueue(client, keys, n, offsets[name] + 10 * n, args.kinds.split(","))
    # A simulator of its own, so what it saw (calls per second, 429s) is this contender's.
    sim, base_url = _start_simulator(args)
    child_env = {
        **env,
        "REFRESH_QUEUE_KEY": keys.queue,
        "COC_API_BASE_URL": base_url,
        "BENCH_CODE_ROOT": str(code),
    }
    child = "naive" if name == "naive" else "worker"
    _compile_bytecode(code)
    print(f"{name} ({code}): draining {n} requests ...", file=sys.stderr, flush=True)
    prefix = args.child_prefix.format(name=name).split() if args.child_prefix else []
    argv = [*prefix, sys.executable, str(Path(__file__).resolve()), "--child", child, *sys.argv[1:]]
    try:
        returncode, stdout, stderr, usage = _run_child(argv, child_env, code)
    finally:
        seen = _stop_simulator(sim)
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if returncode or not lines:
        raise SystemExit(f"{name} failed ({returncode}):\n{stdout[-3000:]}\n{stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["process_cpu_s"] = usage.ru_utime + usage.ru_stime
    result["process_rss_mb"] = usage.ru_maxrss / 1024
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


def _derived(r: dict[str, Any], limit: float) -> dict[str, float]:
    n = r["processed"]

    def per(x: float) -> float:
        return x / n if n else float("nan")

    rate = n / r["wall_s"] if r["wall_s"] else 0.0
    return {
        "rate": rate,
        "rate_ratio": rate / limit,
        "process_cpu_ms": 1000 * per(r["process_cpu_s"]),
        "cpu_ms": 1000 * per(r["cpu_s"]),
        "user_ms": 1000 * per(r["user_s"]),
        "sys_ms": 1000 * per(r["sys_s"]),
        "statements": per(r["statements"]),
        "xacts": per(r["transactions"]),
        "trips": per(r["statements"] + r.get("checks", 0) + 2 * r["transactions"]),
        "redis": per(r.get("redis", 0)),
    }


def _ok(value: float, target: float, higher: bool) -> str:
    good = value >= target if higher else value <= target
    return "met" if good else "**missed**"


def _table(args, n: int, results: dict[str, dict[str, Any]], rss_at_first: float | None) -> list[str]:
    """One table: every contender that drained `n` requests, side by side."""
    limit = args.rate
    names = [name for name in ("worker", "baseline", "naive") if name in results]
    d = {name: _derived(results[name], limit) for name in names}
    heads = {
        "worker": "worker, this checkout",
        "baseline": f"worker, baseline (`{args.baseline_label}`)",
        "naive": "naive loop",
    }
    w, dw = results["worker"], d["worker"]
    rss_target = TARGETS["rss_mb"] if rss_at_first is None else rss_at_first + TARGETS["rss_growth_mb"]
    rss_goal = (
        f"≤ {rss_target:.0f} MB"
        if rss_at_first is None
        else f"≤ {rss_at_first:.0f} + {TARGETS['rss_growth_mb']:.0f} MB"
    )

    def row(label: str, cell, target: str = "") -> str:
        return "| " + " | ".join([label, *(str(cell(name)) for name in names), target]) + " |"

    def outside(name: str) -> str:
        r = results[name]
        if "before_drain_s" not in r:
            return ""
        after = r["process_cpu_s"] - r["before_drain_s"] - r["cpu_s"]
        return f"{r['imported_s']:.2f} / {r['before_drain_s'] - r['imported_s']:.2f} / {after:.2f} s"

    def naive_note(name: str, text: str) -> str:
        return f"{text} (bounded)" if name == "naive" else text

    lines = [
        "| | " + " | ".join(heads[name] for name in names) + " | target (this checkout) |",
        "| --- | " + " | ".join("---:" for _ in names) + " | --- |",
        row(
            "requests drained",
            lambda x: naive_note(x, f"{results[x]['processed']:,} of {results[x]['requests']:,}"),
        ),
        row("stopped", lambda x: results[x]["stopped"]),
        row("wall time", lambda x: f"{results[x]['wall_s']:.1f} s"),
        row("achieved rate", lambda x: f"{d[x]['rate']:.2f}/s"),
        row(
            "rate / limit",
            lambda x: f"{d[x]['rate_ratio']:.3f}",
            f"≥ {TARGETS['rate']} ({_ok(dw['rate_ratio'], TARGETS['rate'], True)})",
        ),
        row(
            "**CPU per request, whole process** (wait4)",
            lambda x: f"{d[x]['process_cpu_ms']:.2f} ms",
            f"≤ {TARGETS['cpu_ms']} ms ({_ok(dw['process_cpu_ms'], TARGETS['cpu_ms'], False)})",
        ),
        row("CPU per request, the drain call alone", lambda x: f"{d[x]['cpu_ms']:.2f} ms"),
        row(
            "… of which user / system",
            lambda x: f"{d[x]['user_ms']:.2f} / {d[x]['sys_ms']:.2f} ms",
        ),
        row("CPU outside the drain call: imports / set-up / close and exit", outside),
        row(
            "**peak RSS, whole process** (wait4)",
            lambda x: f"{results[x]['process_rss_mb']:.0f} MB",
            f"{rss_goal} ({_ok(w['process_rss_mb'], rss_target, False)})",
        ),
        row("Postgres statements per request", lambda x: f"{d[x]['statements']:.3f}"),
        row("Postgres transactions per request", lambda x: f"{d[x]['xacts']:.3f}"),
        row("Postgres round trips per request", lambda x: f"{d[x]['trips']:.3f}"),
        row("Redis commands per request", lambda x: f"{d[x]['redis']:.3f}"),
        row(
            "most calls the API saw in any second",
            lambda x: results[x]["api_seen"].get("max_calls_in_any_second", "?"),
            f"≤ {limit:g}",
        ),
        row(
            f"tightest span of {math.floor(limit) + 1} consecutive calls",
            lambda x: _span(results[x]["api_seen"], limit),
            "≥ 1 s",
        ),
        row("calls refused with 429", lambda x: results[x]["api_seen"].get("throttled", "?"), "0"),
        row("ledger afterwards", lambda x: results[x]["ledger"]),
        row("items left in the queue or in flight", lambda x: results[x]["left_in_queue"]),
    ]
    return lines


def _report(args, runs: list[tuple[int, dict[str, dict[str, Any]]]], machine, command: str) -> str:
    limit = args.rate
    kinds = args.kinds.split(",")
    bodies = (
        f"players grown to about {args.player_bytes:,} bytes each (more achievements, as real players have)"
        if args.player_bytes and kinds == ["player"]
        else f"kinds {', '.join(kinds)} in turn"
        + (f", players grown to about {args.player_bytes:,} bytes" if args.player_bytes else "")
    )
    out = [
        "# Drain benchmark",
        "",
        f"A backlog of refresh requests ({bodies}; every tag different) drained through the CoC API",
        f"simulator at COC_REQS_PER_SEC={limit:g}, the simulator in its own process with",
        f"{args.latency.replace(',', '-')} s of uniform latency per call and its 429 rate limit at",
        f"{limit:g}/s.",
        "Each contender is one fresh process draining the whole backlog; the contenders of one",
        "backlog size run back to back. Written by `bench/drain_bench.py`; regenerate with:",
        "",
        *provenance(command, machine),
        "",
        "```",
        "$ free -h",
        machine["free"],
        "```",
        "",
    ]
    rss_first = None
    for n, results in runs:
        out += [f"## {n:,} requests", "", *_table(args, n, results, rss_first), ""]
        if rss_first is None:
            rss_first = results["worker"]["process_rss_mb"]
    out += [
        "How each figure is measured:",
        "",
        "* rate: requests settled / wall time of the drain call (start-up, login and the last",
        "  response's latency included)."
        + (
            f" The naive loop is bounded to {args.naive_requests} requests or {args.naive_seconds:g} s."
            if args.naive_requests
            else ""
        ),
        "* CPU per request, whole process: user + system time of the child process from `wait4`",
        "  (the interpreter's start, imports, login and shutdown included), divided by the",
        "  requests settled. The drain call alone: `time.process_time()` around it.",
        "* peak RSS: `ru_maxrss` of the child from `wait4`. The target at the larger backlog is",
        f"  the smaller backlog's figure plus {TARGETS['rss_growth_mb']:.0f} MB: memory must not grow",
        "  with the run.",
        "* calls the API saw: arrival times on the simulator's clock, in its own process; a",
        "  tightest span under 1 s means limit + 1 calls in one second, i.e. a 429.",
        "* statements: the `Database.round_trips` counter (one per statement sent).",
        "  Transactions: psycopg `transaction()` blocks, counted in the child, each a BEGIN and a",
        "  COMMIT; with the pool's connection checks, round trips = statements + checks +",
        "  2 x transactions. Redis commands: `execute_command` calls (a script is one).",
        "* the machine is shared: CPU figures move with its load, which is why the contenders of",
        "  one table run back to back, and why several runs are compared below.",
        "",
    ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--requests", default="3000,6000", help="backlog sizes, comma-separated: one table each"
    )
    parser.add_argument("--kinds", default="player", help="kinds enqueued in turn, e.g. player,clan,war")
    parser.add_argument(
        "--player-bytes", type=int, default=23000, help="the simulator's player body size (0: ~3.7 KB)"
    )
    parser.add_argument("--naive-requests", type=int, default=300, help="0: no naive loop")
    parser.add_argument(
        "--no-throttle",
        action="store_true",
        help="the simulator answers no 429 (it still counts the calls in its busiest second): on a "
        "machine so loaded that arrivals bunch up on the simulator's side, the run still measures CPU "
        "and memory instead of stopping with an open circuit",
    )
    parser.add_argument("--naive-seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--latency", default="0.1,0.3")
    parser.add_argument("--budget", type=float, default=900.0, help="the worker's drain deadline, seconds")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also drain each backlog with the code checked out at DIR (e.g. a worktree of main)",
    )
    parser.add_argument("--baseline-label", default="main", help="what the baseline column is called")
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
        help="run each child under CMD ({name}: worker, baseline or naive), "
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
    }
    env.pop("PYTHONPATH", None)  # the child puts its code's checkout first itself
    sizes = [int(x) for x in args.requests.split(",")]
    runs: list[tuple[int, dict[str, dict[str, Any]]]] = []
    try:
        for i, n in enumerate(sizes):
            results: dict[str, dict[str, Any]] = {}
            if args.baseline:
                results["baseline"] = _contender(
                    "baseline", Path(args.baseline).resolve(), n, args, env, db_url, client
                )
            results["worker"] = _contender("worker", ROOT, n, args, env, db_url, client)
            if i == 0 and args.naive_requests:
                results["naive"] = _contender("naive", ROOT, args.naive_requests, args, env, db_url, client)
            runs.append((n, results))
    finally:
        client.close()
    report = _report(args, runs, machine, command.strip())
    print(report)
    print(json.dumps(runs, indent=2), file=sys.stderr)
    if args.out != "-":
        write_keeping_notes(Path(args.out), report, NOTES_MARKER)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
