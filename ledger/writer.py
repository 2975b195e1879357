"""Appending to the outcome ledger, with the snapshots a batch fetched, in one transaction.

The same transaction sends `NOTIFY refresh_done` for the requests it settles
(`coclib.completions`), so a listener hears of a request exactly when its rows can be read.

A batch is made of entries, one per request: its ledger rows and, for `fetched`, its
snapshot. When Postgres refuses a batch's data (`StorageRefused`: a value it cannot hold, a
CHECK, an index row too big), `write()` splits the batch in halves until each refused entry
stands alone, and commits everything else: one request's bad data never costs the others
their rows. A lost connection is not split: nobody can say what committed.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from psycopg.types.json import Jsonb

from coclib.completions import CHANNEL, Settled, payloads
from coclib.db import Database
from coclib.errors import DatabaseUnavailable, StorageRefused
from coclib.snapshots import Snapshot, upsert_snapshots
from coclib.sqlfiles import load_queries
from coclib.storable import storable_text
from ledger.outcomes import LedgerRow, Outcome

log = logging.getLogger(__name__)

# A run summary, or a function that makes it from the rows written with it (as written).
SummaryOrMaker = dict[str, Any] | Callable[[Sequence[LedgerRow]], dict[str, Any]]

DETAIL_MAX_CHARS = 1000


@dataclass(frozen=True, slots=True)
class Entry:
    """What one request adds to a batch: its rows and snapshot land together or not at all."""

    rows: tuple[LedgerRow, ...]
    snapshot: Snapshot | None = None
    owner: Any = None  # the caller's handle on the request, handed back in `Written`


@dataclass
class Written:
    """What became of a batch's entries."""

    committed: list[Entry] = field(default_factory=list)
    refused: list[tuple[Entry, str]] = field(default_factory=list)  # alone, still refused: why
    unwritten: list[Entry] = field(default_factory=list)  # Postgres went away: maybe committed
    unavailable: DatabaseUnavailable | None = None
    summary_written: bool = False


def storable_detail(detail: str | None) -> str | None:
    """A `detail` Postgres will take: no NUL or lone surrogate, at most DETAIL_MAX_CHARS."""
    if detail is None:
        return None
    return storable_text(detail[:DETAIL_MAX_CHARS])


class LedgerWriter:
    """Writes one run's rows. Each `append` is one transaction: a batch lands whole or not at all."""

    def __init__(self, db: Database, run_id: uuid.UUID) -> None:
        self.db = db
        self.run_id = run_id
        self._insert = load_queries()["insert_ledger_rows"]

    def _params(self, rows: Sequence[LedgerRow]) -> dict[str, Any]:
        # The rows as one JSON array for json_to_recordset(): one statement whatever the batch
        # size, serialised by orjson in one call (parallel arrays cost psycopg ~9 µs a row).
        # Texts from outside (ids, details) are made storable first: NUL and lone surrogates.
        stored = [_storable(row) for row in rows]
        document = orjson.dumps(stored)
        return {
            "rows": document.decode(),
            "run_id": self.run_id,
            "channel": CHANNEL,
            "payloads": self._payloads(stored),
        }

    async def append(
        self,
        rows: Sequence[LedgerRow],
        snapshots: Sequence[Snapshot] = (),
        *,
        run_summary: SummaryOrMaker | None = None,
    ) -> list[LedgerRow]:
        """Append `rows`, upsert `snapshots` and record `run_summary`, all or nothing.

        Returns the rows as written: each `fetched` row of a snapshot's kind and tag says
        whether the body `changed` (false too when a newer fetch was stored already, so this
        one rewrote nothing). Raises `StorageRefused` (the data: nothing was written) or
        `DatabaseUnavailable`.
        """
        if not rows and not snapshots and run_summary is None:
            return []
        if not snapshots and run_summary is None:
            await self.db.execute(self._insert, self._params(rows))  # one statement: atomic alone
            return list(rows)
        async with self.db.transaction() as conn:
            if snapshots:
                changed = await upsert_snapshots(self.db, conn, snapshots)
                fetched = {(s.kind, s.tag) for s in snapshots}
                rows = [
                    replace(row, changed=changed.get((row.kind, row.tag), False))
                    if row.outcome is Outcome.FETCHED and (row.kind, row.tag) in fetched
                    else row
                    for row in rows
                ]
            if rows:
                await self.db.run(conn, self._insert, self._params(rows))
            if run_summary is not None:
                summary = run_summary(rows) if callable(run_summary) else run_summary
                await self.db.run(conn, load_queries()["insert_run_summary"], _summary_params(summary))
        return list(rows)

    @staticmethod
    def _payloads(rows: Sequence[LedgerRow]) -> list[str]:
        """The NOTIFY refresh_done payloads telling which requests `rows` (as stored) settle.

        The insert sends them inside its transaction: Postgres delivers them on commit and
        drops them on rollback, so a refused batch, or the half of one that `_bisect` finds
        refused, is never heard of.
        """
        settled = (Settled(r.request_id, r.kind, r.tag, str(r.outcome)) for r in rows if r.outcome.settles)
        return payloads(settled)

    async def write(self, entries: Sequence[Entry], *, run_summary: SummaryOrMaker | None = None) -> Written:
        """Commit `entries` (and the run's summary), isolating any entry Postgres refuses.

        Never raises for Postgres: what could not be written is in the result. When an entry
        is refused the summary is not written (its counts are no longer true): the caller
        writes it again with `write_summary`.
        """
        written = Written()
        try:
            committed = await self._append_entries(entries, run_summary)
        except StorageRefused:
            await self._bisect(entries, written)
        except DatabaseUnavailable as exc:
            written.unwritten.extend(entries)
            written.unavailable = exc
        else:
            written.committed.extend(committed)
            written.summary_written = run_summary is not None
        return written

    async def write_summary(self, run_summary: dict[str, Any]) -> None:
        """Record a run's summary alone. Raises `DatabaseUnavailable`; a refusal is logged."""
        try:
            await self.append((), run_summary=run_summary)
        except StorageRefused as exc:
            # The summary is ours and its text made storable: a bug, but the run's rows are in.
            log.error("Postgres refused the run summary: %s", exc.detail, extra={"summary": run_summary})

    async def _append_entries(
        self, entries: Sequence[Entry], run_summary: SummaryOrMaker | None = None
    ) -> list[Entry]:
        """Append the entries in one transaction; the entries as written (`changed` filled in)."""
        rows = [row for entry in entries for row in entry.rows]
        snapshots = [entry.snapshot for entry in entries if entry.snapshot is not None]
        written = iter(await self.append(rows, snapshots, run_summary=run_summary))
        return [replace(entry, rows=tuple(next(written) for _ in entry.rows)) for entry in entries]

    async def _bisect(self, entries: Sequence[Entry], written: Written) -> None:
        """Commit what Postgres takes of `entries`, in halves, and note each refused entry."""
        pending = [list(entries)]
        while pending:
            part = pending.pop()
            if written.unavailable is not None:
                written.unwritten.extend(part)
                continue
            try:
                committed = await self._append_entries(part)
            except StorageRefused as exc:
                if len(part) == 1:
                    written.refused.append((part[0], exc.detail))
                else:
                    middle = len(part) // 2
                    pending += [part[middle:], part[:middle]]  # the first half goes first
            except DatabaseUnavailable as exc:
                written.unwritten.extend(part)
                written.unavailable = exc
            else:
                written.committed.extend(committed)


def _summary_params(summary: dict[str, Any]) -> dict[str, Any]:
    started, finished = float(summary["started_at"]), float(summary["finished_at"])
    # Recorded as the run ends: Postgres dates it. Recorded late (stashed by a run that lost
    # Postgres, `recorded_by` another run): only the worker's own times can say when it ran.
    late = "recorded_by" in summary
    return {
        "run_id": summary["run_id"],
        "started_at": datetime.fromtimestamp(started, UTC) if late else None,
        "finished_at": datetime.fromtimestamp(finished, UTC) if late else None,
        "duration_s": max(0.0, finished - started),
        "stopped": summary["stopped"],
        "cause": summary.get("cause"),
        "summary": Jsonb(summary),
    }


def _storable(row: LedgerRow) -> LedgerRow:
    """`row` with its request id and detail as Postgres takes them (the same row if they are)."""
    request_id, detail = storable_text(row.request_id), storable_detail(row.detail)
    if request_id is row.request_id and detail is row.detail:
        return row
    return replace(row, request_id=request_id, detail=detail)


def row_dict(row: LedgerRow) -> dict[str, Any]:
    """A row as a plain dict (for logs)."""
    data = asdict(row)
    data["outcome"] = str(row.outcome)
    data["reason"] = None if row.reason is None else str(row.reason)
    return data
