"""The Postgres gateway against a real server: one round trip for a single statement, a
transaction where one is needed, and the pool's check of connections that sat idle."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest

from coclib.db import Database
from coclib.errors import DatabaseUnavailable, StorageRefused

SETTING = "SELECT current_setting('statement_timeout') AS timeout, pg_backend_pid() AS pid"


def run(coro):
    return asyncio.run(coro)


def _terminate(url: str, pid: int) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_single_statement_commits_alone_and_a_transaction_all_or_nothing(database_url):
    table = f"db_pool_{uuid.uuid4().hex[:12]}"

    async def go():
        db = await Database.open(database_url)
        try:
            await db.execute(f"CREATE TABLE {table} (n int CHECK (n > 0))")
            await db.execute(f"INSERT INTO {table} VALUES (1)")
            with pytest.raises(StorageRefused):
                await db.execute(f"INSERT INTO {table} VALUES (2), (-2)")  # one statement: neither
            with pytest.raises(StorageRefused):
                async with db.transaction() as conn:
                    await db.run(conn, f"INSERT INTO {table} VALUES (3)")
                    await db.run(conn, f"INSERT INTO {table} VALUES (-3)")
            row = await db.fetch_one(f"SELECT array_agg(n ORDER BY n) AS ns FROM {table}")
            return row["ns"]
        finally:
            await db.execute(f"DROP TABLE IF EXISTS {table}")
            await db.close()

    assert run(go()) == [1]


def test_a_statement_near_the_deadline_is_bounded_and_the_others_keep_the_sessions_timeout(
    database_url,
):
    async def go():
        db = await Database.open(database_url)
        try:
            free = await db.fetch_one(SETTING)
            bounded = await db.bounded(time.monotonic() + 3.0).fetch_one(SETTING)
            after = await db.fetch_one(SETTING)
            return free["timeout"], bounded["timeout"], after["timeout"]
        finally:
            await db.close()

    free, bounded, after = run(go())
    assert free == after == "15s"
    assert bounded.endswith("ms") and 0 < int(bounded[:-2]) <= 3000


@pytest.mark.parametrize("recently_used", [0.0, 3600.0])
def test_a_connection_postgres_dropped_is_replaced_unless_it_was_just_used(database_url, recently_used):
    """recently_used=0: every connection is checked before use, so a dropped one is replaced
    and the statement succeeds. 3600: the one just used is not checked: the statement fails
    (the run would stop) and the pool, seeing it broken, replaces it for the next."""

    async def go():
        db = await Database.open(database_url, max_size=1, recently_used=recently_used)
        try:
            first = await db.fetch_one(SETTING)
            _terminate(database_url, first["pid"])
            try:
                second = await db.fetch_one(SETTING)
            except DatabaseUnavailable:
                second = None
            third = await db.fetch_one(SETTING)
            return first["pid"], second and second["pid"], third["pid"]
        finally:
            await db.close()

    first, second, third = run(go())
    if recently_used:
        assert second is None and third != first
    else:
        assert second is not None and second != first and third == second
