"""Ledger partitions: made ahead of time, dropped whole by retention.

The work is done by SQL functions of `sql/migrations/0002_partitioned_ledger.sql`; these are
the calls, for the worker (async, through `coclib.db.Database`) and the command line (sync).
Dropping a whole partition is the only way rows ever leave the ledger.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg.rows import dict_row

from coclib.db import Database
from coclib.errortext import first_line
from coclib.sqlfiles import load_queries

log = logging.getLogger(__name__)

# Days of partitions made beyond today: a run that cannot make them (a lock it waits for
# too long) is harmless until this many days of runs in a row have failed, and even then
# rows land in the default partition rather than failing.
DAYS_AHEAD = 3


async def ensure_partitions(db: Database, days_ahead: int = DAYS_AHEAD) -> int | None:
    """Make today's and the next `days_ahead` days' partitions; return how many were new.

    Never raises: a failure is logged and returns None, because a missing future partition
    costs nothing today (and the default partition catches rows meanwhile).
    """
    try:
        row = await db.fetch_one(load_queries()["ensure_partitions"], {"days_ahead": days_ahead})
    except Exception as exc:  # a lock timeout or an outage must not stop the drain
        log.warning("could not make ledger partitions ahead: %s", first_line(exc))
        return None
    created = int(row["created"]) if row else 0
    if created:
        log.info("made %d ledger partition(s) ahead", created)
    return created


async def apply_retention(db: Database, days: int) -> list[dict[str, Any]] | None:
    """Drop every partition whose rows are all older than `days` days; return what went.

    Never raises, for the same reason as `ensure_partitions`: a failed retention only
    leaves old rows for the next run to drop. A failure is logged and returns None.
    """
    try:
        dropped = await db.fetch_all(load_queries()["drop_expired_partitions"], {"days": days})
    except Exception as exc:  # a lock timeout must not fail the run that finished
        log.warning("ledger retention failed: %s", first_line(exc))
        return None
    for part in dropped:
        log.info("retention dropped %s (~%s rows)", part["partition"], part["estimated_rows"])
    return dropped


async def ledger_size(db: Database, *, timeout: float = 2.0) -> dict[str, int] | None:
    """`total_bytes`, `estimated_rows` and `partitions` of the ledger, from the catalog (no scan).

    Never raises: a failure is logged and returns None (the size is a metric, not the run's
    work). `timeout` bounds waiting for a pooled connection, so a Postgres outage costs little.
    """
    try:
        row = await db.fetch_one(load_queries()["ledger_size"], timeout=timeout)
    except Exception as exc:
        log.warning("could not read the ledger's size: %s", first_line(exc))
        return None
    return {key: int(value) for key, value in (row or {}).items()}


def ensure_partitions_sync(conn: psycopg.Connection, days_ahead: int = DAYS_AHEAD) -> int:
    """`ensure_partitions` for a plain connection (the command line); raises on failure."""
    with conn.cursor() as cur:
        cur.execute(load_queries()["ensure_partitions"], {"days_ahead": days_ahead})
        row = cur.fetchone()
    return int(row[0]) if row else 0


def expired_partitions(conn: psycopg.Connection, days: int) -> list[dict[str, Any]]:
    """What retention with `days` would drop, without dropping it."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(load_queries()["expired_partitions"], {"days": days})
        return cur.fetchall()


def drop_expired_partitions(conn: psycopg.Connection, days: int) -> list[dict[str, Any]]:
    """Retention for a plain connection: drop what `expired_partitions` lists."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(load_queries()["drop_expired_partitions"], {"days": days})
        return cur.fetchall()


def list_partitions(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every partition with its range, estimated rows and size; the default last."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(load_queries()["list_partitions"])
        return cur.fetchall()
