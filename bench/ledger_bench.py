"""Benchmark the ledger at scale: refresh_health and every audit query on ~10 million rows.

    python bench/ledger_bench.py --rows 10000000            # build, measure, write bench/ledger.md
    python bench/ledger_bench.py --rows 200000 --out -      # a quick look, printed only

It builds a scratch database (`coc_bench_ledger`, dropped first) with the real migrations,
fills the ledger with `generate_series` (about two rows per request over `--days` days that
end now, in daily partitions: ~95% fetched, 2% failed, 1.5% deferred, 1.5% skipped; a bad-tag
pool that fails again and again; runs every 2 minutes with a summary each, except a few that
"died", one of them 30 minutes ago, leaving orphaned attempts), plus snapshot tables, and
ANALYZEs. Then it times `SELECT * FROM refresh_health` and each `sql/audit/*.sql` with its
defaults (a 24-hour window), `--repeat` times after a warm-up, and keeps each one's
`EXPLAIN (ANALYZE, BUFFERS)`. If the worker's Lambda handler is importable it also times
`GET /health` end to end (Postgres and Redis, warm container).

Not a test: pytest does not collect it. Postgres: TEST_DATABASE_URL, else the local server.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench.report import write_keeping_notes  # noqa: E402
from coclib.migrations import MIGRATIONS_DIR, migrate  # noqa: E402
from coclib.testing.services import LOCAL_POSTGRES, create_database, with_database  # noqa: E402
from ledger.audit import load_audits  # noqa: E402

DB_NAME = "coc_bench_ledger"
NOTES_MARKER = "<!-- analysis: written by hand; ledger_bench.py keeps everything below this line -->"
RUN_SECONDS = 120  # the EventBridge schedule
# Fetches that brought back the stored body: 6 % with the freshness gate on (bench/freshness.md:
# 0.94 useful refreshes per call).
UNCHANGED_PERCENT = 6

# Requests i in [lo, hi] of n over `span` seconds ending at t_end; two rows each (an attempt,
# then its outcome `lat` ms later), except the attempts a dead run never finished.
# hashint8 gives repeatable "random" numbers; ids follow time order, as the worker's do.
GENERATE = """
INSERT INTO refresh_ledger (id, request_id, run_id, kind, tag, outcome, reason, detail,
                            http_status, latency_ms, occurred_at, changed)
OVERRIDING SYSTEM VALUE
SELECT 2 * r.i - 2 + v.n, r.request_id, r.run_id, r.kind, r.tag, v.outcome, v.reason, v.detail,
       v.http_status, v.latency_ms, v.at,
       CASE WHEN v.outcome = 'fetched'
            THEN (hashint8(r.i * 11 + 7) & 2147483647) %% 100 >= %(unchanged_percent)s END
FROM (
    SELECT s.i, md5('req' || s.i) AS request_id, md5('run' || s.run_no)::uuid AS run_id, s.at, s.u, s.lat,
           CASE WHEN s.k < 6 THEN 'player' WHEN s.k < 9 THEN 'clan' ELSE 'war' END AS kind,
           '#' || translate(substr(md5(CASE WHEN s.u BETWEEN 950 AND 969 THEN 'bad' || (s.h %% 2000)
                                            ELSE 'tag' || (s.h %% 200000) END), 1, 8),
                            '0123456789abcdef', '0289PYLQGRJCUV28') AS tag,
           (s.run_no %% 211 = 7 OR s.run_no = %(dead_run)s) AND s.h %% 100 < 2 AS orphan
    FROM (
        SELECT i, %(t0)s::timestamptz + make_interval(secs => i * %(step)s) AS at,
               floor(i * %(step)s / %(run_seconds)s)::bigint AS run_no,
               (hashint8(i) & 2147483647) %% 1000 AS u,
               (hashint8(i * 7 + 1) & 2147483647) %% 10 AS k,
               (hashint8(i * 13 + 5) & 2147483647) AS h,
               80 + (hashint8(i * 3 + 2) & 2147483647) %% 320 AS lat
        FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) i
    ) s
) r
CROSS JOIN LATERAL (VALUES
    (1, 'attempted'::text, NULL::text, NULL::text, NULL::smallint, NULL::integer, r.at),
    (2, CASE WHEN r.u < 950 THEN 'fetched' WHEN r.u < 970 THEN 'failed'
             WHEN r.u < 985 THEN 'deferred' ELSE 'skipped-deadline' END,
        CASE WHEN r.u < 950 THEN NULL
             WHEN r.u < 970
             THEN (ARRAY['not_found', 'not_found', 'not_found', 'private_war_log', 'timeout'])[1 + r.u %% 5]
             WHEN r.u < 985 THEN 'maintenance' ELSE 'deadline' END,
        CASE WHEN r.u >= 950 THEN 'simulated outcome for ' || r.tag END,
        CASE WHEN r.u < 950 THEN 200 WHEN r.u < 970 THEN 404 WHEN r.u < 985 THEN 503 END::smallint,
        r.lat::integer, r.at + make_interval(secs => r.lat / 1000.0))
) v(n, outcome, reason, detail, http_status, latency_ms, at)
WHERE v.n = 1 OR NOT r.orphan
"""

SUMMARIES = """
INSERT INTO refresh_run_summaries (run_id, started_at, finished_at, stopped, cause, summary)
SELECT md5('run' || run_no)::uuid,
       %(t0)s::timestamptz + make_interval(secs => run_no * %(run_seconds)s),
       %(t0)s::timestamptz + make_interval(secs => run_no * %(run_seconds)s + %(run_seconds)s - 1),
       CASE WHEN run_no %% 50 = 3 THEN 'circuit_open' ELSE 'queue_empty' END,
       CASE WHEN run_no %% 50 = 3 THEN 'maintenance' END,
       jsonb_build_object('api_requests', round(%(run_seconds)s / %(step)s))
FROM generate_series(0, %(runs)s - 1) run_no
WHERE run_no %% 211 <> 7 AND run_no <> %(dead_run)s
  AND %(t0)s::timestamptz + make_interval(secs => run_no * %(run_seconds)s + %(run_seconds)s) <= %(t_end)s
"""

SNAPSHOTS = """
INSERT INTO {table} ({key}, data, fetched_at)
SELECT '#' || translate(substr(md5('{kind}' || i), 1, 9), '0123456789abcdef', '0289PYLQGRJCUV28'),
       jsonb_build_object('name', 'n' || i, 'townHallLevel', 1 + i %% 16, 'clanLevel', 1 + i %% 30,
                          'state', 'inWar', 'teamSize', 15),
       %(t_end)s::timestamptz - make_interval(secs => (hashint8(i) & 2147483647) %% (7 * 86400))
FROM generate_series(1, %(n)s) i
ON CONFLICT DO NOTHING
"""


def admin_url() -> str:
    return os.environ.get("TEST_DATABASE_URL") or LOCAL_POSTGRES


def build(
    url: str, rows: int, days: float, default_days: float, log: Callable[[str], None]
) -> dict[str, Any]:
    """Fill a freshly migrated database; return what was built. The first `default_days` days
    get no daily partition: their rows land in the default partition, as when partitions were
    not made in time (or before partitioning)."""
    n = rows // 2
    span = days * 86400
    step = span / n
    with psycopg.connect(url, autocommit=True) as conn:
        t_end = conn.execute("SELECT date_trunc('second', now())").fetchone()[0]
        t0 = conn.execute("SELECT %s::timestamptz - make_interval(secs => %s)", (t_end, span)).fetchone()[0]
        runs = int(span // RUN_SECONDS) + 1
        dead_run = int((span - 1800) // RUN_SECONDS)  # the run that started ~30 minutes ago died
        conn.execute(
            "SELECT refresh_ledger_create_partition(d::date) FROM generate_series("
            "((%s::timestamptz + make_interval(days => %s)) AT TIME ZONE 'UTC')::date + 1,"
            " (%s::timestamptz AT TIME ZONE 'UTC')::date, interval '1 day') d",
            (t0, int(default_days), t_end),
        )
        chunk = 500_000
        started = time.perf_counter()
        for lo in range(1, n + 1, chunk):
            hi = min(n, lo + chunk - 1)
            conn.execute(
                GENERATE,
                {
                    "lo": lo,
                    "hi": hi,
                    "t0": t0,
                    "step": step,
                    "run_seconds": RUN_SECONDS,
                    "dead_run": dead_run,
                    "unchanged_percent": UNCHANGED_PERCENT,
                },
            )
            log(f"  requests {hi:,}/{n:,} ({time.perf_counter() - started:.0f} s)")
        conn.execute(
            SUMMARIES,
            {
                "t0": t0,
                "t_end": t_end,
                "step": step,
                "run_seconds": RUN_SECONDS,
                "runs": runs,
                "dead_run": dead_run,
            },
        )
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('refresh_ledger', 'id'), max(id)) FROM refresh_ledger"
        )
        for table, key, kind, count in (
            ("players", "tag", "p", 200_000),
            ("clans", "tag", "c", 50_000),
            ("wars", "clan_tag", "w", 20_000),
        ):
            conn.execute(SNAPSHOTS.format(table=table, key=key, kind=kind), {"t_end": t_end, "n": count})
        log("  VACUUM ANALYZE")
        conn.execute("VACUUM ANALYZE")
    return {**describe(url), "seconds": round(time.perf_counter() - started)}


def describe(url: str) -> dict[str, Any]:
    """What a built ledger holds."""
    with psycopg.connect(url, autocommit=True) as conn:
        return {
            "rows": conn.execute("SELECT count(*) FROM refresh_ledger").fetchone()[0],
            "partitions": conn.execute("SELECT count(*) FROM refresh_ledger_partitions").fetchone()[0],
            "default_rows": conn.execute("SELECT count(*) FROM refresh_ledger_default").fetchone()[0],
            "size": conn.execute(
                "SELECT pg_size_pretty(sum(total_bytes)) FROM refresh_ledger_partitions"
            ).fetchone()[0],
            "rollup_rows": conn.execute("SELECT count(*) FROM refresh_ledger_minutes").fetchone()[0],
            "t_end": conn.execute("SELECT max(occurred_at) FROM refresh_ledger").fetchone()[0],
            "seconds": 0,
        }


def timings(run: Callable[[], object], repeat: int) -> dict[str, float]:
    """Median and p95 of `repeat` runs in milliseconds, after two warm-up runs."""
    for _ in range(2):
        run()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1000)
    return _stats(samples)


def measure(url: str, repeat: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Time refresh_health and every audit query; return the results and their plans."""
    results: list[dict[str, Any]] = []
    plans: dict[str, str] = {}
    audits = load_audits()
    # No server-side prepared statements: psql and `python -m ledger audit` run each query
    # once per session, so each run here gets a plan for its own values, as theirs do.
    with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
        bad_tag = conn.execute(
            "SELECT tag FROM refresh_ledger WHERE outcome = 'failed'"
            " AND occurred_at > now() - interval '1 hour' GROUP BY tag ORDER BY count(*) DESC, tag LIMIT 1"
        ).fetchone()[0]
        cases: list[tuple[str, str, dict[str, str]]] = [
            ("refresh_health", "SELECT * FROM refresh_health", {})
        ]
        for name, query in audits.items():
            values = {"tag": bad_tag} if "tag" in query.required else {}
            cases.append((name, query.sql, query.bind(values)))
        for name, sql, params in cases:

            def once(sql: str = sql, params: dict[str, str] = params) -> int:
                with conn.cursor() as cur:
                    cur.execute(sql, params)
                    return len(cur.fetchall())

            rows = once()
            stats = timings(once, repeat)
            plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params).fetchall()
            plans[name] = "\n".join(line for (line,) in plan)
            results.append({"name": name, "rows": rows, **stats})
    return results, plans


HEALTH_NOW = "SELECT * FROM refresh_health_stats()"  # the view since migration 0008
HEALTH_BEFORE = (ROOT / "bench" / "refresh_health_0003.sql").read_text()


def _function_in(migration: str, name: str) -> str:
    """The `CREATE [OR REPLACE] FUNCTION name` statement of a migration, as CREATE OR REPLACE."""
    text = (MIGRATIONS_DIR / migration).read_text()
    found = re.search(rf"^CREATE (?:OR REPLACE )?FUNCTION {name}\(.*?^\$\$;$", text, re.S | re.M)
    if found is None:
        raise SystemExit(f"{migration} defines no function {name}")
    return found.group(0).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


# The orphan search: through the runs without a summary, reading each over its span (0003),
# and from refresh_open_attempts (0012).
SEARCH_BY_RUN = _function_in("0003_ledger_rollup_and_runs.sql", "refresh_orphaned_attempts_between")
SEARCH_NOW = _function_in("0012_open_attempts.sql", "refresh_orphaned_attempts_between")
# Each contender: the view's SELECT and the orphan search it calls.
HEALTH_CONTENDERS = (
    ("0003 (before)", HEALTH_BEFORE, SEARCH_BY_RUN),
    ("0008, search by run", HEALTH_NOW, SEARCH_BY_RUN),
    ("0012 (now)", HEALTH_NOW, SEARCH_NOW),
)


def _set_health_view(url: str, select: str, search: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP VIEW refresh_health")
        conn.execute("CREATE VIEW refresh_health AS " + select)
        conn.execute(search)


def measure_health(url: str, repeat: int) -> dict[str, dict[str, Any]]:
    """`refresh_health` as 0003 defined it, as 0008 did (with 0003's orphan search) and as it is
    now, on the same data, each measured the ways it is used: a session that asks once (psql,
    `python -m ledger`: planning included), a session that asks again and again unprepared, one
    that prepares it (the worker's pool does after five uses), `EXPLAIN ANALYZE`'s planning and
    execution times, and `GET /health` through the Lambda handler, warm. All with the bench's
    run that died 30 minutes ago (whose orphans the search must count), and once more without
    it."""
    out: dict[str, dict[str, Any]] = {}
    for label, select, search in HEALTH_CONTENDERS:
        _set_health_view(url, select, search)
        result: dict[str, Any] = {}
        with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:

            def plain() -> None:
                conn.execute("SELECT * FROM refresh_health").fetchall()

            result["session, unprepared"] = timings(plain, repeat)
            planning, execution = [], []
            for _ in range(repeat):
                plan = conn.execute("EXPLAIN (ANALYZE, SUMMARY, FORMAT JSON) SELECT * FROM refresh_health")
                summary = plan.fetchone()[0][0]
                planning.append(summary["Planning Time"])
                execution.append(summary["Execution Time"])
            result["planning"] = _stats(planning)
            result["execution"] = _stats(execution)
        with psycopg.connect(url, autocommit=True, prepare_threshold=0) as conn:

            def prepared() -> None:
                conn.execute("SELECT * FROM refresh_health", prepare=True).fetchall()

            result["session, prepared"] = timings(prepared, repeat)
        fresh: list[float] = []
        for _ in range(repeat):
            with psycopg.connect(url, autocommit=True, prepare_threshold=None) as conn:
                start = time.perf_counter()
                conn.execute("SELECT * FROM refresh_health").fetchall()
                fresh.append((time.perf_counter() - start) * 1000)
        result["new session each time"] = _stats(fresh)
        http = measure_http_health(url, repeat)
        result["GET /health (handler, warm)"] = http if isinstance(http, str) else _stats_of(http)
        # The usual hour: no run died in it. The dead run is given a summary in a transaction
        # that is rolled back, so refresh_health_stats does not search (0003's view does).
        with psycopg.connect(url, prepare_threshold=None) as conn:
            conn.execute(
                "INSERT INTO refresh_run_summaries (run_id, started_at, finished_at, stopped, summary)"
                " SELECT m.run_id, min(m.first_at), max(m.last_at), 'queue_empty', '{}'"
                " FROM refresh_ledger_minutes m WHERE m.minute > now() - interval '2 hours'"
                " AND NOT EXISTS (SELECT 1 FROM refresh_run_summaries s WHERE s.run_id = m.run_id)"
                " GROUP BY m.run_id"
            )

            def no_crash() -> None:
                conn.execute("SELECT * FROM refresh_health").fetchall()

            result["session, unprepared, no run died in the hour"] = timings(no_crash, repeat)
            conn.rollback()
        out[label] = result
    _set_health_view(url, HEALTH_NOW, SEARCH_NOW)
    return out


def _stats(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    return {"median": statistics.median(samples), "p95": p95, "max": samples[-1]}


def _stats_of(result: dict[str, Any]) -> dict[str, float]:
    return {k: result[k] for k in ("median", "p95", "max")}


def measure_http_health(url: str, repeat: int) -> dict[str, Any] | str:
    """`GET /health` through the Lambda handler, warm; a reason string if it cannot run here."""
    try:
        import lambda_function as entry
        from coclib.testing.lambda_context import LambdaContext, rest_event
        from coclib.testing.services import find_redis
    except ImportError as exc:
        return f"not measured: {exc}"
    os.environ.update(
        {
            "DATABASE_URL": url,
            "REDIS_URL": find_redis(ROOT / ".cache" / "test-services"),
            "COC_API_TOKENS": "bench",
            "LOG_LEVEL": "WARNING",
        }
    )
    handler = getattr(entry, "lambda_handler", None)
    if handler is None:
        return "not measured: lambda_function has no lambda_handler"
    status: list[int] = []

    def once() -> None:
        answer = handler(rest_event("GET", "/health"), LambdaContext())
        status.append(answer.get("statusCode"))

    try:
        stats = timings(once, repeat)
    except Exception as exc:  # another team's code: report, do not fail the benchmark
        return f"not measured: {type(exc).__name__}: {exc}"
    finally:
        shutdown = getattr(entry, "shutdown", None)
        if shutdown:
            shutdown()
    return {"name": "GET /health (handler, warm)", "rows": status[-1], **stats}


def machine(url: str) -> dict[str, str]:
    def run(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "?"

    with psycopg.connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        settings = conn.execute(
            "SELECT string_agg(name || '=' || setting || coalesce(unit, ''), ', ' ORDER BY name)"
            " FROM pg_settings WHERE name IN ('shared_buffers', 'work_mem', 'jit',"
            " 'max_parallel_workers_per_gather', 'random_page_cost')"
        ).fetchone()[0]
    memory = run("free", "-h").splitlines()
    return {
        "cpus": run("nproc"),
        "cpu model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else "?",
        "memory": memory[1].split()[1] if len(memory) > 1 else "?",
        "postgres": f"{version} ({settings})",
        "python": platform.python_version(),
    }


TARGETS = {"refresh_health": 5.0, "GET /health (handler, warm)": 10.0}


HEALTH_TARGETS = {"session, unprepared": 5.0, "GET /health (handler, warm)": 10.0}


def _health_rows(health: dict[str, dict[str, Any]]) -> list[str]:
    ways = list(next(iter(health.values())))
    lines = []
    for way in ways:
        cells = []
        for result in health.values():
            value = result[way]
            cells.append(value if isinstance(value, str) else f"{value['median']:.2f} / {value['p95']:.2f}")
        target = HEALTH_TARGETS.get(way)
        now = list(health.values())[-1][way]
        met = (
            ""
            if target is None or isinstance(now, str)
            else ("met" if now["p95"] <= target else "**missed**")
        )
        lines.append(
            f"| {way} | " + " | ".join(cells) + f" | {'' if target is None else f'≤ {target:g} ({met})'} |"
        )
    return lines


def report(
    args: argparse.Namespace,
    built: dict[str, Any],
    results: list[dict[str, Any]],
    plans: dict[str, str],
    http: dict[str, Any] | str,
    host: dict[str, str],
    health: dict[str, dict[str, Any]],
) -> str:
    lines = [
        "# Ledger benchmark",
        "",
        "`refresh_health` and every `sql/audit/*.sql` (defaults: the last 24 hours) on a generated ledger.",
        "Written by `bench/ledger_bench.py`; regenerate with:",
        "",
        "```",
        f"python bench/ledger_bench.py --rows {args.rows} --days {args.days:g} "
        f"--default-days {args.default_days:g} --repeat {args.repeat}",
        "```",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {host['cpus']} CPUs ({host['cpu model']}), "
        f"{host['memory']} memory; PostgreSQL {host['postgres']}; Python {host['python']}.",
        "",
        f"Ledger: {built['rows']:,} rows over {args.days:g} days in {built['partitions']} partitions "
        f"(daily, plus days ahead and the default), {built['size']} with indexes; "
        f"{built['rollup_rows']:,} rows in `refresh_ledger_minutes`; built in {built['seconds']} s. "
        f"The first {args.default_days:g} days ({built['default_rows']:,} rows) are in the default",
        "partition.",
        "A run that died 30 minutes before the end left orphaned attempts, so `refresh_health`",
        "counts orphans on every call (before 0012 by reading that run; now from `refresh_open_attempts`).",
        "",
        "## refresh_health, before and now",
        "",
        "The view as migration 0003 defined it, as 0008 defines it with 0003's orphan search (each",
        "run without a summary read over its span), and with 0012's (`refresh_open_attempts`), on the",
        f"same ledger, one after the other in this run; milliseconds over {args.repeat} runs after two",
        "warm-up runs (client-side wall time of execute + fetch, except planning and execution:",
        "`EXPLAIN (ANALYZE, SUMMARY)`).",
        "Since 0008 the view is a PL/pgSQL function whose statements are planned with the hour's",
        "bounds as values, so over the partitions the hour lies in: their planning is inside its",
        "execution.",
        "",
        "| | " + " | ".join(f"{label} median / p95" for label in health) + " | target (p95) |",
        "| --- | " + " | ".join("---:" for _ in health) + " | --- |",
        *_health_rows(health),
        "",
        f"Times are client-side wall time of execute + fetch over one connection, {args.repeat} runs after "
        "two warm-up runs (data in the OS cache, as on a busy server).",
        "",
        "| query | rows | median ms | p95 ms | max ms | target ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    all_results = [*results, *([http] if isinstance(http, dict) else [])]
    for r in all_results:
        target = TARGETS.get(r["name"], 200.0)
        mark = "" if r["p95"] <= target else " (over)"
        lines.append(
            f"| `{r['name']}` | {r['rows']} | {r['median']:.1f} | {r['p95']:.1f} | {r['max']:.1f} | "
            f"{target:g}{mark} |"
        )
    if isinstance(http, str):
        lines += ["", f"`GET /health` end to end: {http}"]
    lines += [
        "",
        "## Plans",
        "",
        "`EXPLAIN (ANALYZE, BUFFERS)` of one run each: `Subplans Removed` and the partitions left in "
        "each `Append` show the pruning; index names show the index used.",
        "",
    ]
    for name, plan in plans.items():
        lines += [
            f"<details><summary><code>{name}</code></summary>",
            "",
            "```",
            plan,
            "```",
            "",
            "</details>",
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=10_000_000, help="ledger rows to generate")
    parser.add_argument("--days", type=float, default=7.0, help="days the rows span, ending now")
    parser.add_argument(
        "--default-days", type=float, default=3.0, help="first days of rows left in the default partition"
    )
    parser.add_argument("--repeat", type=int, default=50, help="timed runs per query")
    parser.add_argument(
        "--out", default=str(ROOT / "bench" / "ledger.md"), help="report file, or - for stdout only"
    )
    parser.add_argument("--keep", action="store_true", help=f"keep the {DB_NAME} database afterwards")
    parser.add_argument("--reuse", action="store_true", help=f"measure a kept {DB_NAME} again, no build")
    args = parser.parse_args(argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    admin = admin_url()
    if args.reuse:
        url = with_database(admin, DB_NAME)
        built = describe(url)
        log(f"reusing {DB_NAME} ({built['rows']:,} rows; the data ends {built['t_end']}, queries use now())")
    else:
        url = create_database(admin, DB_NAME)
    try:
        if not args.reuse:
            log(f"migrating {DB_NAME}: {', '.join(migrate(url))}")
            log(f"building {args.rows:,} ledger rows over {args.days:g} days")
            built = build(url, args.rows, args.days, args.default_days, log)
            log(f"built {built['rows']:,} rows in {built['seconds']} s; measuring")
        health = measure_health(url, args.repeat)
        results, plans = measure(url, args.repeat)
        http = measure_http_health(url, args.repeat)
        text = report(args, built, results, plans, http, machine(url), health)
    finally:
        if not args.keep and not args.reuse:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    table = text.split("## Plans")[0]
    print(table)
    if args.out != "-":
        write_keeping_notes(Path(args.out), text, NOTES_MARKER)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
