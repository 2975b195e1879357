"""What the ledger remembers about requests a run finds again: the drain's memory between runs.

A request comes back to a run from the in-flight list of a run that died, or from the queue
after a run put it back. The ledger says whether it was settled already, how many runs died
while it was in flight, and how many runs its own call stopped with an unexpected error: a
request that keeps ending runs early is `failed` rather than tried for ever.
"""

from __future__ import annotations

from collections.abc import Sequence

from coclib.db import Database
from coclib.sqlfiles import load_queries
from ledger.outcomes import SETTLING


async def settled(db: Database, request_ids: Sequence[str]) -> set[str]:
    """The requests among these that already have a settling row."""
    params = {"ids": list(request_ids), "settling": sorted(SETTLING)}
    rows = await db.fetch_all(load_queries()["settled_requests"], params)
    return {row["request_id"] for row in rows}


async def interruptions(db: Database, request_ids: Sequence[str]) -> dict[str, int]:
    """Per request, the runs that attempted it and died before writing its terminal row."""
    rows = await db.fetch_all(load_queries()["interruptions"], {"ids": list(request_ids)})
    return {row["request_id"]: row["interrupted"] for row in rows}


async def unexpected_errors(db: Database, request_ids: Sequence[str]) -> dict[str, int]:
    """Per request, the runs its own call stopped with an unexpected error."""
    rows = await db.fetch_all(load_queries()["unexpected_errors"], {"ids": list(request_ids)})
    return {row["request_id"]: row["runs"] for row in rows}
