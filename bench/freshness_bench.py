"""A site-shaped day in a few minutes: does the freshness gate spend the API budget better?

    python bench/freshness_bench.py                 # main, off, on: 80 s each
    python bench/freshness_bench.py --seconds 60 --variants on

The site: 400 players and 100 clans. Visitors re-request popular tags (Zipf, s = 1.1, at
`--site-rate` requests a second) while a background sweep requests every tag once per
`--sweep` seconds; producers enqueue through `coclib.queue.enqueue` (de-duplicated while a
request waits). The worker drains back to back in runs of 20 s at `--rate` calls a second, as
the scheduled Lambda would with a backlog. The simulated API serves each URL from its own cache
(`api_cache`: the body of the first call after the copy expired, for max-age seconds, with an
`Age`), and each tag's body changes at its own rate: log-uniform periods from 20 s to 1 hour,
so a few change often and most rarely.

Variants: `main` is the worker before this change (every request called, every body rewritten:
the upserts of `main`, swapped in for the run); `off` is FRESHNESS=off (every request called,
change detection on); `on` is the gate. Reported per variant:

* calls made (the simulator's count) and calls saved (`skipped-fresh` rows);
* useful refreshes per call: fetches that found a changed body / calls;
* WAL bytes per settled request (`pg_current_wal_lsn()`, on a private embedded Postgres that
  nothing else writes to);
* staleness of the 25 most popular tags, sampled every 2 s after a warm-up: how long the stored body has been
  behind the game (0 while it holds the newest version; else the time since the first version
  it misses appeared), p50 and p95 over all samples, and the same for all tags.

Private embedded Postgres and Redis (the `local` extra) in a temporary directory; the simulator
in a thread. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import math
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coclib.keys import QueueKeys  # noqa: E402
from coclib.migrations import migrate  # noqa: E402
from coclib.queue import enqueue  # noqa: E402
from coclib.settings import Settings  # noqa: E402
from coclib.sqlfiles import load_queries  # noqa: E402
from coclib.testing.services import create_database, embedded_postgres, embedded_redis  # noqa: E402
from coclib.testing.simulator import CocApiSimulator, SimulatorThread, simulated_body  # noqa: E402
from coclib.testing.tags import numbered_tag  # noqa: E402
from worker.drain import DrainPolicy  # noqa: E402
from worker.runtime import Worker  # noqa: E402

TOKEN = "bench-token"
RUN_SECONDS = 20.0
TRACKED = 25
# The field each kind's changing body moves by one per version (coclib.testing.simulator.bodies).
VERSION_FIELD = {"player": "trophies", "clan": "clanPoints"}


def site_tags(players: int, clans: int, seed: int) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """The tags, most popular first, and each one's change period (seconds)."""
    rng = random.Random(seed)
    tags = [("player", numbered_tag(i, lead="P")) for i in range(players)]
    tags += [("clan", numbered_tag(i, lead="C")) for i in range(clans)]
    rng.shuffle(tags)
    periods = {tag: math.exp(rng.uniform(math.log(20), math.log(3600))) for _, tag in tags}
    return tags, periods


class Zipf:
    """Draws ranks 0..n-1 with probability proportional to 1 / (rank + 1) ** s."""

    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        weights = [1 / (k + 1) ** s for k in range(n)]
        total = sum(weights)
        self.cumulative = [sum(weights[: k + 1]) / total for k in range(n)]
        self.rng = rng

    def draw(self) -> int:
        return min(bisect.bisect_left(self.cumulative, self.rng.random()), len(self.cumulative) - 1)


async def produce(client, keys, tags, args, stop: asyncio.Event, counts: Counter) -> None:
    """Visitors (Zipf) and the sweep, enqueuing on a timetable until `stop`."""
    rng = random.Random(args.seed + 1)
    zipf = Zipf(len(tags), 1.1, rng)
    started = time.monotonic()
    site_due, sweep_due, sweep_at = started, started, 0
    sweep_gap = args.sweep / len(tags)
    while not stop.is_set():
        now = time.monotonic()
        while site_due <= now:
            kind, tag = tags[zipf.draw()]
            counts["site"] += 1
            counts["queued"] += enqueue(client, kind, tag, keys=keys) is not None
            site_due += rng.expovariate(args.site_rate)
        while sweep_due <= now:
            kind, tag = tags[sweep_at % len(tags)]
            sweep_at += 1
            counts["sweep"] += 1
            counts["queued"] += enqueue(client, kind, tag, keys=keys) is not None
            sweep_due += sweep_gap
        await asyncio.sleep(0.02)


def staleness(sim: CocApiSimulator, conn, tags, now: float) -> list[float]:
    """Per tag, how long its stored body has been behind the game at `now` (sim clock)."""
    found = {}
    for kind, table in (("player", "players"), ("clan", "clans")):
        names = [t for k, t in tags if k == kind]
        for tag, value in conn.execute(
            f"SELECT tag, (data ->> '{VERSION_FIELD[kind]}')::int FROM {table} WHERE tag = ANY(%s)", (names,)
        ):
            found[(kind, tag)] = value
    out = []
    for kind, tag in tags:
        period = sim.change_period(kind, tag)
        base = simulated_body(kind, tag)[VERSION_FIELD[kind]]
        stored = found.get((kind, tag))
        current = sim.body_version(kind, tag, now)
        if stored is None:
            out.append(now - sim.change_epoch)  # never stored: behind since the start
            continue
        version = stored - base
        out.append(0.0 if version >= current else now - (sim.change_epoch + (version + 1) * period))
    return out


def rewriting_upserts() -> dict[str, str]:
    """The snapshot upsert as it was before change detection: every body rewritten."""
    upsert = load_queries()["upsert_snapshots"]
    return {
        "upsert_snapshots": re.sub(
            r"SET data = CASE .*? END,", "SET data = EXCLUDED.data,", upsert, flags=re.S
        )
    }


async def one_variant(name: str, gate: bool, args, admin_pg: str, redis_url: str) -> dict:
    url = create_database(admin_pg, f"coc_bench_fresh_{name}")
    migrate(url)
    tags, periods = site_tags(args.players, args.clans, args.seed)
    sim = CocApiSimulator(tokens=(TOKEN,), latency=(0.1, 0.3), seed=0)
    sim.api_cache = True
    sim.change_period = lambda kind, tag: periods[tag]
    key = f"{{bench-{name}}}:queue"
    keys = QueueKeys(key)
    client = redis.Redis.from_url(redis_url)
    counts: Counter = Counter()
    samples_tracked: list[float] = []
    samples_all: list[float] = []
    with SimulatorThread(sim), psycopg.connect(url, autocommit=True) as conn:
        settings = Settings.from_env(
            {
                "DATABASE_URL": url,
                "REDIS_URL": redis_url,
                "COC_API_BASE_URL": sim.base_url,
                "COC_API_TOKENS": TOKEN,
                "COC_REQS_PER_SEC": str(args.rate),
                "REFRESH_QUEUE_KEY": key,
                "LOG_LEVEL": "WARNING",
            }
        )
        sim.change_epoch = time.time()
        wal_start = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        stop = asyncio.Event()
        producer = asyncio.create_task(produce(client, keys, tags, args, stop, counts))
        worker = Worker(settings, policy=DrainPolicy(freshness=gate))

        async def sample() -> None:
            await asyncio.sleep(args.warmup)  # the first stores of the run are not its steady state
            while not stop.is_set():
                await asyncio.sleep(2.0)
                now = time.time()
                values = await asyncio.to_thread(staleness, sim, conn, tags, now)
                samples_tracked.extend(values[:TRACKED])
                samples_all.extend(values)

        sampler = asyncio.create_task(sample())
        ends = time.monotonic() + args.seconds
        summaries = []
        try:
            while (left := ends - time.monotonic()) > 1.0:
                summaries.append(await worker.drain(min(RUN_SECONDS, left)))
                if summaries[-1].stopped == "queue_empty":
                    await asyncio.sleep(1.0)  # the next run, as a lingering Lambda would pick it up
        finally:
            stop.set()
            await asyncio.gather(producer, sampler)
            await worker.close()
        wal = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)::bigint", (wal_start,)
        ).fetchone()[0]
        rows = dict(
            conn.execute(
                "SELECT outcome || coalesce(':' || changed::text, ''), count(*) "
                "FROM refresh_ledger GROUP BY 1"
            ).fetchall()
        )
    client.close()
    calls = len(sim.calls)
    settled = sum(v for k, v in rows.items() if k.split(":")[0] in ("fetched", "failed", "skipped-fresh"))
    changed = rows.get("fetched:true", 0)
    return {
        "variant": name,
        "requests": counts["site"] + counts["sweep"],
        "queued": counts["queued"],
        "settled": settled,
        "calls": calls,
        "saved": rows.get("skipped-fresh", 0),
        "fetched_changed": changed,
        "fetched_unchanged": rows.get("fetched:false", 0),
        "useful_per_call": changed / calls if calls else 0.0,
        "wal_per_request": wal / settled if settled else 0.0,
        "p50_tracked": pct(samples_tracked, 0.5),
        "p95_tracked": pct(samples_tracked, 0.95),
        "p50_all": pct(samples_all, 0.5),
        "p95_all": pct(samples_all, 0.95),
        "queue_left": summaries[-1].queue_size if summaries else None,
        "runs": len(summaries),
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=80.0, help="per variant")
    parser.add_argument("--variants", default="main,off,on", help="main, off, on: see above")
    parser.add_argument("--players", type=int, default=400)
    parser.add_argument("--clans", type=int, default=100)
    parser.add_argument("--site-rate", type=float, default=12.0, help="visitor requests a second (Zipf)")
    parser.add_argument("--sweep", type=float, default=100.0, help="seconds to request every tag once")
    parser.add_argument("--rate", type=float, default=10.0, help="COC_REQS_PER_SEC")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before staleness is sampled")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="coc-freshness-bench-"))
    admin_pg = embedded_postgres(state / "pg")
    redis_url = embedded_redis(state / "redis.db")
    results = []
    queries = load_queries()  # cached: what the writer reads
    for name in args.variants.split(","):
        saved = dict(queries)
        if name == "main":
            queries.update(rewriting_upserts())
        try:
            results.append(asyncio.run(one_variant(name, name == "on", args, admin_pg, redis_url)))
        finally:
            queries.update(saved)
    print(
        f"{args.players} players + {args.clans} clans; site {args.site_rate}/s Zipf(1.1), sweep every "
        f"{args.sweep:.0f} s ({(args.players + args.clans) / args.sweep:.1f}/s); limit {args.rate}/s; "
        f"{args.seconds:.0f} s per variant"
    )
    print(
        "| variant | requests (queued) | settled | calls | saved by the gate | changed / unchanged fetches "
        "| useful refreshes per call | WAL / request | staleness p50 / p95, top 25 | p50 / p95, all tags "
        "| queue left |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['variant']} | {r['requests']:,} ({r['queued']:,}) | {r['settled']:,} | {r['calls']:,} "
            f"| {r['saved']:,} | {r['fetched_changed']:,} / {r['fetched_unchanged']:,} "
            f"| {r['useful_per_call']:.3f} | {r['wal_per_request'] / 1024:.1f} KiB "
            f"| {r['p50_tracked']:.1f} / {r['p95_tracked']:.1f} s "
            f"| {r['p50_all']:.1f} / {r['p95_all']:.1f} s "
            f"| {r['queue_left']} |"
        )
    print(orjson.dumps(results).decode())


if __name__ == "__main__":
    main()
