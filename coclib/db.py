"""Postgres: one pool, one small gateway, and driver errors turned into ours.

A run has a deadline, and Postgres must not hold it past it: a table locked by someone else
(a migration, an operator's `LOCK TABLE`) makes a write wait, and the connection's own
`statement_timeout` (15 s) is longer than a run's last seconds. `Database.bounded(deadline)` is
the same gateway on the same pool whose transactions all end by `deadline`: each one that has
less time left than the session's timeout starts with `SET LOCAL statement_timeout` and
`lock_timeout` set to what is left (one round trip more, in a run's last 15 s only), waits
for a pooled connection no longer than that, and one with no time left fails at once, without
a connection: a `DatabaseUnavailable` like any timeout.

A single statement (`execute`, `fetch_all`, `fetch_one`) is sent on its own, in autocommit: it
is atomic by itself, and BEGIN and COMMIT would be two more round trips, each costing the
worker about 0.15 ms of CPU (bench/drain.md). Only a statement bounded as above is wrapped in
a transaction, for its `SET LOCAL`.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from weakref import WeakKeyDictionary

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from coclib.errors import DatabaseUnavailable, StorageRefused
from coclib.errortext import describe

log = logging.getLogger(__name__)

Query = str | sql.Composable  # a statement: text, or composed with identifiers (psycopg.sql)

STATEMENT_TIMEOUT_MS = 15_000  # the session's own, for statements with no deadline nearer
# A connection given back to the pool less than this long ago is handed out again unchecked.
RECENTLY_USED_SECONDS = 5.0

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


class _Recency:
    """The pool's connection check, skipped for a connection given back a moment ago.

    The check is a round trip (about 0.12 ms of the worker's CPU) before every statement or
    transaction; during a drain the connections were in use a few hundred milliseconds before,
    and Postgres dropping one since is as likely as dropping it mid-statement (either way the
    run stops: `DatabaseUnavailable`). A connection idle longer, as when a Lambda container
    slept between invocations, is checked, and replaced if it is dead.
    """

    def __init__(self, recent: float) -> None:
        self._given_back: WeakKeyDictionary[psycopg.AsyncConnection, float] = WeakKeyDictionary()
        self._recent = recent

    async def reset(self, conn: psycopg.AsyncConnection) -> None:
        self._given_back[conn] = time.monotonic()

    async def check(self, conn: psycopg.AsyncConnection) -> None:
        given_back = self._given_back.pop(conn, None)
        if given_back is None or time.monotonic() - given_back >= self._recent:
            await AsyncConnectionPool.check_connection(conn)


class Database:
    """The gateway to Postgres: `run`, `fetch_one`, `fetch_all`, `fetch_all_on` and `transaction`.

    Every call takes a connection from the pool; `round_trips` counts statements sent, for the
    benchmark (shared with every `bounded()` view of this gateway). `deadline` (a `clock()`
    value), when set, bounds every transaction: see the module docstring.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool,
        *,
        acquire_timeout: float = 5.0,
        statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.acquire_timeout = acquire_timeout
        self.statement_timeout_ms = statement_timeout_ms
        self.clock = clock
        self.deadline: float | None = None
        self._trips = [0]

    @property
    def round_trips(self) -> int:
        return self._trips[0]

    def bounded(self, deadline: float, clock: Callable[[], float] | None = None) -> Database:
        """This gateway, on the same pool, with every transaction ending by `deadline` on `clock`
        (by default this gateway's, `time.monotonic`).

        Its `deadline` may be moved later (a run's last writes get the time it kept for them).
        """
        view = copy.copy(self)  # shares the pool and the round-trip count
        view.deadline = deadline
        view.clock = clock or self.clock
        return view

    @classmethod
    async def open(
        cls,
        conninfo: str,
        *,
        max_size: int = 4,
        connect_timeout: float = 5.0,
        statement_timeout_ms: int = STATEMENT_TIMEOUT_MS,
        recently_used: float = RECENTLY_USED_SECONDS,
    ) -> Database:
        """A pool that connects lazily: a dead Postgres surfaces on first use, not here.

        A pooled connection is checked before use unless given back less than `recently_used`
        seconds ago (`_Recency`)."""
        recency = _Recency(recently_used)
        pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=connect_timeout,
            check=recency.check,
            reset=recency.reset,
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
        return cls(pool, acquire_timeout=connect_timeout, statement_timeout_ms=statement_timeout_ms)

    async def close(self) -> None:
        await self.pool.close()

    def transaction(
        self, *, timeout: float | None = None
    ) -> AbstractAsyncContextManager[psycopg.AsyncConnection]:
        """A connection inside a transaction: committed on success, rolled back on error."""
        return self._connection(timeout, transaction=True)

    @asynccontextmanager
    async def _connection(
        self, timeout: float | None, *, transaction: bool
    ) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pooled connection, in a transaction if asked or if bounded by the deadline."""
        acquire = timeout or self.acquire_timeout
        left_ms = None
        if self.deadline is not None:
            left = self.deadline - self.clock()
            if left <= 0.001:
                raise DatabaseUnavailable("the run's deadline has come: not waiting for Postgres")
            acquire = min(acquire, left)
            if left * 1000 < self.statement_timeout_ms:
                left_ms = max(1, int(left * 1000))
        try:
            async with self.pool.connection(timeout=acquire) as conn:
                if not transaction and left_ms is None:
                    yield conn
                    return
                async with conn.transaction():
                    if left_ms is not None:
                        # Local to this transaction: the pooled connection keeps its own timeout.
                        self._trips[0] += 1
                        await conn.execute(_BOUND, {"ms": f"{left_ms}ms"})
                    yield conn
        except (psycopg.Error, PoolTimeout, UnicodeEncodeError) as exc:
            raise translate(exc) from exc

    async def execute(self, query: Query, params: Mapping[str, Any] | None = None) -> None:
        """One statement, atomic on its own."""
        async with self._connection(None, transaction=False) as conn:
            await self.run(conn, query, params)

    async def run(
        self, conn: psycopg.AsyncConnection, query: Query, params: Mapping[str, Any] | None = None
    ) -> None:
        """Execute one statement on a connection from `transaction()`."""
        self._trips[0] += 1
        await conn.execute(query, params)

    async def fetch_all_on(
        self, conn: psycopg.AsyncConnection, query: Query, params: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """All rows of one statement executed on a connection from `transaction()`, as dicts."""
        self._trips[0] += 1
        cur = await conn.execute(query, params)
        return await cur.fetchall()

    async def fetch_all(
        self, query: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """All rows of one query, as dicts."""
        async with self._connection(timeout, transaction=False) as conn:
            return await self.fetch_all_on(conn, query, params)

    async def fetch_one(
        self, query: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any] | None:
        """The first row of one query, or None."""
        rows = await self.fetch_all(query, params, timeout=timeout)
        return rows[0] if rows else None


# Both timeouts: a statement waiting for a lock counts against statement_timeout too, but
# lock_timeout names the wait in the error ("canceling statement due to lock timeout").
_BOUND = "SELECT set_config('statement_timeout', %(ms)s, true), set_config('lock_timeout', %(ms)s, true)"
