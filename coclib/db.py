"""Postgres: one pool, one small gateway, and driver errors turned into ours."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from coclib.errors import DatabaseUnavailable, StorageRefused
from coclib.errortext import describe

log = logging.getLogger(__name__)

# SQLSTATE classes that blame the data sent, not the server or the schema: data exceptions
# (a NUL byte, a value out of range, too long), integrity violations (a CHECK) and program
# limits (an index row too big). Without the offending request the same write succeeds.
_DATA_CLASSES = frozenset({"22", "23", "54"})


async def _configure(conn: psycopg.AsyncConnection) -> None:
    # orjson both ways: jsonb snapshots are the bulk of what the worker writes.
    set_json_dumps(orjson.dumps, conn)
    set_json_loads(orjson.loads, conn)


def translate(exc: Exception) -> Exception:
    """Our error for a driver's: `StorageRefused` when the data is to blame, else `DatabaseUnavailable`.

    Everything that is not the data's fault (a lost connection, a timeout, a missing table, a
    lost privilege) is systemic: no request is to blame, so none may be failed for it.
    """
    if isinstance(exc, UnicodeEncodeError) or (
        (isinstance(exc, psycopg.Error) and (exc.sqlstate or "")[:2] in _DATA_CLASSES)
        or (isinstance(exc, psycopg.DataError) and exc.sqlstate is None)  # refused before sending
    ):
        return StorageRefused(describe(exc))
    return DatabaseUnavailable(describe(exc))


class Database:
    """The gateway to Postgres: `run`, `fetch_one`, `fetch_all`, `fetch_all_on` and `transaction`.

    Every call takes a connection from the pool; `round_trips` counts statements
    sent, for the benchmark.
    """

    def __init__(self, pool: AsyncConnectionPool, *, acquire_timeout: float = 5.0) -> None:
        self.pool = pool
        self.acquire_timeout = acquire_timeout
        self.round_trips = 0

    @classmethod
    async def open(
        cls,
        conninfo: str,
        *,
        max_size: int = 4,
        connect_timeout: float = 5.0,
        statement_timeout_ms: int = 15_000,
    ) -> Database:
        """A pool that connects lazily: a dead Postgres surfaces on first use, not here."""
        pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=connect_timeout,
            check=AsyncConnectionPool.check_connection,
            configure=_configure,
            kwargs={
                "row_factory": dict_row,
                "autocommit": True,
                "connect_timeout": max(1, round(connect_timeout)),
                # JIT compiling costs more than our short queries take (bench/ledger.md).
                "options": f"-c statement_timeout={statement_timeout_ms} -c jit=off",
            },
        )
        await pool.open(wait=False)
        return cls(pool, acquire_timeout=connect_timeout)

    async def close(self) -> None:
        await self.pool.close()

    @asynccontextmanager
    async def transaction(self, *, timeout: float | None = None) -> AsyncIterator[psycopg.AsyncConnection]:
        """A connection inside a transaction: committed on success, rolled back on error."""
        try:
            async with (
                self.pool.connection(timeout=timeout or self.acquire_timeout) as conn,
                conn.transaction(),
            ):
                yield conn
        except (psycopg.Error, PoolTimeout, UnicodeEncodeError) as exc:
            raise translate(exc) from exc

    async def run(
        self, conn: psycopg.AsyncConnection, query: str, params: Mapping[str, Any] | None = None
    ) -> None:
        """Execute one statement on a connection from `transaction()`."""
        self.round_trips += 1
        await conn.execute(query, params)

    async def fetch_all_on(
        self, conn: psycopg.AsyncConnection, query: str, params: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """All rows of one statement executed on a connection from `transaction()`, as dicts."""
        self.round_trips += 1
        cur = await conn.execute(query, params)
        return await cur.fetchall()

    async def fetch_all(
        self, query: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """All rows of one query, as dicts."""
        async with self.transaction(timeout=timeout) as conn:
            self.round_trips += 1
            cur = await conn.execute(query, params)
            return await cur.fetchall()

    async def fetch_one(
        self, query: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any] | None:
        """The first row of one query, or None."""
        rows = await self.fetch_all(query, params, timeout=timeout)
        return rows[0] if rows else None
