"""Snapshot upserts (`coclib.snapshots`) against real Postgres: the newest fetch per tag wins.

Random batches of snapshots (tags repeating within and across batches, fetch times in any
order) are written one transaction per batch; afterwards each table must hold, for every
tag, the body with the latest `fetched_at` seen in any batch, whatever the batches' order.
Stored times are Postgres's clock less each body's age: here, where both clocks are one, within
the time the writes took of the fetch times given.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import orjson
import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coclib.db import Database
from coclib.snapshots import Snapshot, snapshot_of, upsert_snapshots

TABLES = {"player": ("players", "tag"), "clan": ("clans", "tag"), "war": ("wars", "clan_tag")}

snapshot = st.builds(
    lambda kind, slot, at: snapshot_of(kind, f"#S{slot}", {"slot": slot, "at": at}, 1_700_000_000 + at),
    kind=st.sampled_from(sorted(TABLES)),
    slot=st.integers(0, 4),
    at=st.integers(0, 10_000),  # whole seconds: exact timestamps; equal times, equal bodies
)
batches = st.lists(st.lists(snapshot, max_size=12), min_size=1, max_size=5)


def _stored(database_url: str) -> dict[tuple[str, str], tuple[dict, datetime]]:
    with psycopg.connect(database_url) as conn:
        found = {}
        for kind, (table, key) in TABLES.items():
            for tag, data, at in conn.execute(f"SELECT {key}, data, fetched_at FROM {table}"):
                found[(kind, tag)] = (data, at)
        conn.execute("TRUNCATE players, clans, wars")
        return found


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=batches)
def test_each_tag_keeps_its_newest_fetch(database_url, batches):
    async def write() -> int:
        db = await Database.open(database_url)
        try:
            for batch in batches:
                async with db.transaction() as conn:
                    await upsert_snapshots(db, conn, batch)
            return db.round_trips
        finally:
            await db.close()

    began = time.time()
    round_trips = asyncio.run(write())
    took = time.time() - began
    stored = _stored(database_url)

    newest: dict[tuple[str, str], Snapshot] = {}
    for snap in (s for batch in batches for s in batch):
        key = (snap.kind, snap.tag)
        if key not in newest or snap.fetched_at > newest[key].fetched_at:
            newest[key] = snap
    assert set(stored) == set(newest)
    for key, snap in newest.items():
        data, at = stored[key]
        assert abs(at.timestamp() - snap.fetched_at) <= took
        assert data == orjson.loads(bytes(snap.data))
    # One statement per kind present in a batch, whatever the batch's size.
    assert round_trips == sum(len({s.kind for s in batch}) for batch in batches)
