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

UPSERT_BY_KIND = {"player": "upsert_players", "clan": "upsert_clans", "war": "upsert_wars"}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One fetched body. `fetched_at` (unix seconds) orders writers: older never overwrites newer."""

    kind: str
    tag: str
    data: dict[str, Any]
    fetched_at: float


def arrays_by_kind(snapshots: Iterable[Snapshot]) -> dict[str, dict[str, list[Any]]]:
    """The parameters of each kind's upsert: parallel arrays of tags, bodies and fetch times."""
    by_kind: dict[str, dict[str, list[Any]]] = defaultdict(lambda: {"tag": [], "data": [], "fetched_at": []})
    for snap in snapshots:
        arrays = by_kind[snap.kind]
        arrays["tag"].append(snap.tag)
        arrays["data"].append(Jsonb(snap.data))
        arrays["fetched_at"].append(datetime.fromtimestamp(snap.fetched_at, UTC))
    return by_kind


async def upsert_snapshots(
    db: Database, conn: psycopg.AsyncConnection, snapshots: Iterable[Snapshot]
) -> None:
    """Upsert every snapshot on `conn` (the caller's transaction): one statement per kind."""
    queries = load_queries()
    for kind, arrays in arrays_by_kind(snapshots).items():
        await db.run(conn, queries[UPSERT_BY_KIND[kind]], arrays)
