"""Appending to the outcome ledger, with the snapshots a batch fetched, in one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from coclib.db import Database
from coclib.snapshots import Snapshot, upsert_snapshots
from coclib.sqlfiles import load_queries
from ledger.outcomes import LedgerRow

_COLUMNS = ("request_id", "kind", "tag", "outcome", "reason", "detail", "http_status", "latency_ms")
DETAIL_MAX_CHARS = 1000


class LedgerWriter:
    """Writes one run's rows. Each call is one transaction, so a batch lands whole or not at all."""

    def __init__(self, db: Database, run_id: uuid.UUID) -> None:
        self.db = db
        self.run_id = run_id
        self._insert = load_queries()["insert_ledger_rows"]

    def _params(self, rows: Sequence[LedgerRow]) -> dict[str, list[Any]]:
        # Parallel arrays for unnest(): one statement whatever the batch size.
        params: dict[str, list[Any]] = {name: [] for name in _COLUMNS}
        for row in rows:
            for name in _COLUMNS:
                params[name].append(getattr(row, name))
        params["outcome"] = [str(o) for o in params["outcome"]]
        params["detail"] = [d[:DETAIL_MAX_CHARS] if d else d for d in params["detail"]]
        params["run_id"] = [self.run_id] * len(rows)
        return params

    async def append(
        self,
        rows: Sequence[LedgerRow],
        snapshots: Sequence[Snapshot] = (),
        *,
        run_summary: dict[str, Any] | None = None,
    ) -> None:
        """Append `rows`, upsert `snapshots` and record `run_summary`, all or nothing."""
        if not rows and not snapshots and run_summary is None:
            return
        async with self.db.transaction() as conn:
            if snapshots:
                await upsert_snapshots(self.db, conn, snapshots)
            if rows:
                await self.db.run(conn, self._insert, self._params(rows))
            if run_summary is not None:
                await self.db.run(conn, load_queries()["insert_run_summary"], _summary_params(run_summary))


def _summary_params(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": summary["run_id"],
        "started_at": datetime.fromtimestamp(summary["started_at"], UTC),
        "finished_at": datetime.fromtimestamp(summary["finished_at"], UTC),
        "stopped": summary["stopped"],
        "cause": summary.get("cause"),
        "summary": Jsonb(summary),
    }


def row_dict(row: LedgerRow) -> dict[str, Any]:
    """A row as a plain dict (for logs)."""
    data = asdict(row)
    data["outcome"] = str(row.outcome)
    return data
