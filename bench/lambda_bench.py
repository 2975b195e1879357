"""Cold start and warm invocations of `lambda_handler`, against local Postgres, Redis and the simulator.

    .venv/bin/python bench/lambda_bench.py [--cold 10] [--warm 300] [--write bench/lambda.md]

Cold start: a fresh `python -I` process per sample (no PYTHON* variables, no user site, no
current directory on sys.path: only the venv, as close to Lambda's fresh interpreter as this
machine gets) imports the handler module and invokes it with an EventBridge scheduled event on
an empty queue, then with GET /health. Reported: the import (Lambda's init phase), the first
invocation (settings, logging, pool, Redis, API client, first queries), the first health
answer, and the whole process from spawn to exit.

Warm: one process, one container; after a first (cold) invocation, `--warm` scheduled events
on an empty queue and `--warm` GET /health events, each timed. stdout (the JSON log lines and
EMF metrics, written as in Lambda) goes to /dev/null while timing.

Services: Postgres at DATABASE_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres;
a database `coc_bench_lambda` is created and migrated), Redis at BENCH_REDIS_URL (default
redis://127.0.0.1:6379/14, flushed), the simulator on a free port.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coclib.migrations import migrate  # noqa: E402
from coclib.testing.lambda_context import LambdaContext, rest_event, scheduled_event  # noqa: E402
from coclib.testing.services import create_database  # noqa: E402
from coclib.testing.simulator import CocApiSimulator, SimulatorThread  # noqa: E402

TOKEN = "bench-token"

COLD_SCRIPT = r"""
import time
t0 = time.perf_counter()
import json, os, sys
sys.path.insert(0, os.environ["BENCH_ROOT"])
t_aids = time.perf_counter()
try:
    import lambda_function  # the zip's root shim, as Lambda imports it
except ModuleNotFoundError:
    from worker import lambda_function
t_import = time.perf_counter()
from coclib.testing.lambda_context import LambdaContext, rest_event, scheduled_event  # stdlib only
first = lambda_function.lambda_handler(scheduled_event(), LambdaContext())
t_first = time.perf_counter()
health = lambda_function.lambda_handler(rest_event("GET", "/health"), LambdaContext())
t_health = time.perf_counter()
second = lambda_function.lambda_handler(scheduled_event(), LambdaContext())
t_second = time.perf_counter()
from worker.lambda_function import shutdown
shutdown()
assert first["stopped"] == "queue_empty" and health["statusCode"] == 200, (first, health)
print("BENCH " + json.dumps({
    "import_ms": (t_import - t_aids) * 1000,
    "first_invocation_ms": (t_first - t_import) * 1000,
    "first_health_ms": (t_health - t_first) * 1000,
    "second_invocation_ms": (t_second - t_health) * 1000,
}))
"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summarise(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p95": pct(values, 95),
        "min": min(values),
        "max": max(values),
    }


def cold_samples(env: dict[str, str], n: int) -> list[dict[str, float]]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-I", "-c", COLD_SCRIPT], env=env, capture_output=True, text=True, timeout=120
        )
        wall = (time.perf_counter() - started) * 1000
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH ")), None)
        if done.returncode != 0 or line is None:
            raise SystemExit(f"cold start failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        sample = orjson.loads(line[6:])
        sample["process_ms"] = wall
        samples.append(sample)
    return samples


def warm_samples(n: int) -> dict[str, list[float]]:
    from worker import lambda_function

    timings: dict[str, list[float]] = {"scheduled, empty queue": [], "GET /health": []}
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        lambda_function.lambda_handler(scheduled_event(), LambdaContext())  # the cold one, not counted
        for _ in range(n):
            started = time.perf_counter()
            summary = lambda_function.lambda_handler(scheduled_event(), LambdaContext())
            timings["scheduled, empty queue"].append((time.perf_counter() - started) * 1000)
            assert summary["stopped"] == "queue_empty", summary
        for _ in range(n):
            started = time.perf_counter()
            response = lambda_function.lambda_handler(rest_event("GET", "/health"), LambdaContext())
            timings["GET /health"].append((time.perf_counter() - started) * 1000)
            assert response["statusCode"] == 200, response
    lambda_function.shutdown()
    return timings


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} CPUs, {system}, Python {platform.python_version()}"


def versions(database_url: str, redis_url: str) -> str:
    with psycopg.connect(database_url) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
    rd = redis.Redis.from_url(redis_url).info("server")["redis_version"]
    return f"Postgres {pg}, Redis {rd} (both local, TCP on 127.0.0.1)"


def table(rows: list[tuple[str, dict[str, float]]]) -> str:
    lines = [
        "| measure | n | median ms | p95 ms | min ms | max ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in rows:
        lines.append(
            f"| {name} | {s['n']} | {s['median']:.1f} | {s['p95']:.1f} | {s['min']:.1f} | {s['max']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cold", type=int, default=10, help="cold-start samples (fresh processes)")
    parser.add_argument("--warm", type=int, default=300, help="warm invocations per event")
    parser.add_argument("--write", type=Path, help="write the results as markdown here")
    args = parser.parse_args()

    admin = os.environ.get("DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    database_url = create_database(admin, "coc_bench_lambda")
    migrate(database_url)
    redis.Redis.from_url(redis_url).flushdb()

    with SimulatorThread(CocApiSimulator(tokens=(TOKEN,))) as sim:
        settings_env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "COC_API_BASE_URL": sim.base_url,
            "COC_API_TOKENS": TOKEN,
            "COC_REQS_PER_SEC": "30",
            "ENVIRONMENT": "development",
            "LOG_LEVEL": "INFO",
        }
        child_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "COC_"))}
        child_env.update(settings_env, BENCH_ROOT=str(ROOT))
        cold = cold_samples(child_env, args.cold)
        os.environ.update(settings_env)
        warm = warm_samples(args.warm)

    rows = [
        ("cold: import `lambda_function` (init phase)", summarise([s["import_ms"] for s in cold])),
        (
            "cold: first invocation, scheduled, empty queue",
            summarise([s["first_invocation_ms"] for s in cold]),
        ),
        ("cold: first GET /health after it", summarise([s["first_health_ms"] for s in cold])),
        (
            "cold: second scheduled invocation (now warm)",
            summarise([s["second_invocation_ms"] for s in cold]),
        ),
        ("cold: whole `python -I` process, spawn to exit", summarise([s["process_ms"] for s in cold])),
        *[(f"warm: {name}", summarise(values)) for name, values in warm.items()],
    ]
    command = f"bench/lambda_bench.py --cold {args.cold} --warm {args.warm}"
    report = "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d')} with `.venv/bin/python {command}`.",
            "",
            f"Machine: {machine()}. {versions(database_url, redis_url)}; the CoC API simulator in-process "
            "(no API call is made on an empty queue).",
            "",
            table(rows),
        ]
    )
    print(report)
    if args.write:
        text = args.write.read_text() if args.write.exists() else ""
        start, end = "<!-- results: start -->", "<!-- results: end -->"
        if start in text and end in text:
            text = text[: text.index(start) + len(start)] + "\n" + report + "\n" + text[text.index(end) :]
        else:
            text = f"{text}\n{start}\n{report}\n{end}\n"
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
