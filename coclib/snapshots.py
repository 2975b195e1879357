"""Snapshot upserts: the latest API JSON per player, clan and clan's current war."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from coclib.db import Database
from coclib.sqlfiles import load_queries

_UPSERT_BY_KIND = {"player": "upsert_player", "clan": "upsert_clan", "war": "upsert_war"}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One fetched body. `fetched_at` (unix seconds) orders writers: older never overwrites newer."""

    kind: str
    tag: str
    data: dict[str, Any]
    fetched_at: float


async def upsert_snapshots(
    db: Database, conn: psycopg.AsyncConnection, snapshots: Iterable[Snapshot]
) -> None:
    """Upsert every snapshot on `conn` (the caller's transaction), one pipelined batch per kind."""
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for snap in snapshots:
        by_kind[snap.kind].append(
            {
                "tag": snap.tag,
                "data": Jsonb(snap.data),
                "fetched_at": datetime.fromtimestamp(snap.fetched_at, UTC),
            }
        )
    queries = load_queries()
    for kind, params in by_kind.items():
        await db.run_many(conn, queries[_UPSERT_BY_KIND[kind]], params)
