"""Benchmark three ways to upsert a batch of snapshots, side by side in one run.

    python bench/upsert_bench.py            # 30 batches of 64 simulator bodies, 3 rounds each

* `rows`: one statement per snapshot, pipelined with `executemany` (the first pass's way);
* `text-array`: the project's `unnest` statement with the bodies as a text `jsonb[]` literal,
  every quote in every body escaped by psycopg (the trap);
* `binary-array`: the same statement with the bodies sent in binary (`%(data)b`, the way
  `sql/queries.sql` does it).

Each variant writes the same batches (players, clans and wars in equal thirds, the simulator's
bodies, 12 KB on average) to a scratch database (`coc_bench_upsert`, dropped first, real
migrations), one transaction per batch, and reports the worker-side CPU per snapshot
(`time.process_time()`) and the wall time. Postgres's own CPU is not included: the question is
what the Lambda pays. Not a test: pytest does not collect it. Postgres: TEST_DATABASE_URL,
else the local server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


from coclib.db import Database  # noqa: E402
from coclib.migrations import migrate  # noqa: E402
from coclib.snapshots import Snapshot, arrays_by_kind, snapshot_of, upsert_query, upsert_snapshots  # noqa: E402
from coclib.sqlfiles import load_queries  # noqa: E402
from coclib.testing.services import LOCAL_POSTGRES, create_database, drop_database  # noqa: E402
from coclib.testing.simulator import simulated_body  # noqa: E402

DB_NAME = "coc_bench_upsert"
TABLES = {"player": ("players", "tag"), "clan": ("clans", "tag"), "war": ("wars", "clan_tag")}


def _row_upsert(kind: str) -> str:
    table, key = TABLES[kind]
    return (
        f"INSERT INTO {table} AS t ({key}, data, fetched_at) VALUES (%(tag)s, %(data)s, %(fetched_at)s) "
        f"ON CONFLICT ({key}) DO UPDATE SET data = EXCLUDED.data, fetched_at = EXCLUDED.fetched_at "
        "WHERE t.fetched_at <= EXCLUDED.fetched_at"
    )


async def _rows(db: Database, conn, snapshots: list[Snapshot]) -> None:
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for snap in snapshots:
        at = datetime.fromtimestamp(snap.fetched_at, UTC)
        by_kind[snap.kind].append({"tag": snap.tag, "data": snap.data, "fetched_at": at})
    for kind, params in by_kind.items():
        async with conn.cursor() as cur:
            await cur.executemany(_row_upsert(kind), params)


async def _text_array(db: Database, conn, snapshots: list[Snapshot]) -> None:
    template = load_queries()["upsert_snapshots"].replace("%(data)b", "%(data)s")
    for kind, arrays in arrays_by_kind(snapshots).items():
        text = upsert_query(kind, template)
        await conn.execute(text, {**arrays, "data": [bytes(d).decode() for d in arrays["data"]]})


VARIANTS = {"rows": _rows, "text-array": _text_array, "binary-array": upsert_snapshots}


async def _measure(url: str, variant: str, batches: int, batch: int) -> tuple[float, float]:
    kinds = ("player", "clan", "war")
    bodies = [(kinds[i % 3], f"#Q{i:05d}", simulated_body(kinds[i % 3], f"#Q{i:05d}")) for i in range(batch)]
    write = VARIANTS[variant]
    db = await Database.open(url)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            snapshots = [snapshot_of(kind, tag, body, time.time()) for kind, tag, body in bodies]
            async with db.transaction() as conn:
                await write(db, conn, snapshots)
        return time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64, help="snapshots a transaction (flush_rows)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    admin = os.environ.get("TEST_DATABASE_URL") or LOCAL_POSTGRES
    url = create_database(admin, DB_NAME)
    try:
        migrate(url)
        n = args.batches * args.batch
        print(f"{args.batches} transactions of {args.batch} snapshots, {args.rounds} rounds, interleaved")
        print("| variant | CPU ms / snapshot (median) | wall ms / snapshot (median) |")
        print("| --- | ---: | ---: |")
        results: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for _ in range(args.rounds):
            for variant in VARIANTS:
                results[variant].append(asyncio.run(_measure(url, variant, args.batches, args.batch)))
        for variant, runs in results.items():
            cpu = statistics.median(c for c, _ in runs) * 1000 / n
            wall = statistics.median(w for _, w in runs) * 1000 / n
            print(f"| `{variant}` | {cpu:.3f} | {wall:.3f} |")
    finally:
        drop_database(admin, DB_NAME)


if __name__ == "__main__":
    main()
