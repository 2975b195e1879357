"""The freshness gate: requests whose snapshot the API would only repeat are settled without a call.

The API answers from its own cache for `max-age` seconds (minus any `Age`), so a request for a
tag whose stored snapshot is still inside that lifetime can only get the same body back. The
drain asks the gate twice, both times before an `attempted` row is written, so a skipped
request costs no call slot and never slows the rate for the rest:

* `skip_fresh`, once per group of items taken off the queue: one query (`fresh_snapshots`)
  compares each snapshot's `fresh_until` with Postgres's now(), the clock that wrote it;
* `hold_or_skip`, at each dispatch, in memory: a request for a tag this run fetched a moment ago
  (its row may wait in the next batch) is skipped until the answer's own expiry, and one for a
  tag whose call is in flight waits for that call instead of repeating it.

A skipped request gets one `skipped-fresh` row (reason `fresh`) whose `detail` says until when
the snapshot is fresh; it settles the request. `FRESHNESS=off` turns the gate off.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from coclib.db import Database
from coclib.reasons import Reason
from coclib.sqlfiles import load_queries
from ledger.outcomes import Outcome
from worker.books import Books
from worker.tracker import Item, Stage

_ARRAYS = {"player": "players", "clan": "clans", "war": "wars"}


def _key(item: Item) -> tuple[str, str]:
    request = item.taken.request
    return request.kind, request.tag


def fresh_detail(until: datetime) -> str:
    """The `detail` of a `skipped-fresh` row."""
    shown = until.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f"the stored snapshot is fresh until {shown} (the API's max-age minus Age)"


class FreshnessGate:
    """One run's gate: the query for groups of taken items, and what the run fetched itself."""

    def __init__(self, db: Database, books: Books, *, enabled: bool = True) -> None:
        self.db = db
        self.books = books
        self.enabled = enabled
        # (kind, tag) -> when the API's copy fetched in this run expires (time.monotonic()).
        self._fetched: dict[tuple[str, str], float] = {}

    async def skip_fresh(self, items: Sequence[Item]) -> None:
        """Settle `skipped-fresh` each of `items` whose stored snapshot is fresh: one query.

        Raises `DatabaseUnavailable` (nothing was recorded).
        """
        candidates = [item for item in items if item.stage is Stage.BUFFERED and item.taken.request]
        if not self.enabled or not candidates:
            return
        params = {name: [] for name in _ARRAYS.values()}
        for item in candidates:
            kind, tag = _key(item)
            params[_ARRAYS[kind]].append(tag)
        rows = await self.db.fetch_all(load_queries()["fresh_snapshots"], params)
        fresh = {(row["kind"], row["tag"]): row["fresh_until"] for row in rows}
        for item in candidates:
            until = fresh.get(_key(item))
            if until is not None:
                self._skip(item, until)

    def note(self, kind: str, tag: str, fresh_until: float | None) -> None:
        """A call of this run answered: its copy is fresh until `fresh_until` (monotonic)."""
        if self.enabled and fresh_until is not None:
            self._fetched[(kind, tag)] = max(fresh_until, self._fetched.get((kind, tag), 0.0))

    def hold_or_skip(self, group: Iterable[Item], calling: Iterable[Item]) -> list[Item]:
        """The items of `group` to call now: those this run fetched a moment ago are settled
        `skipped-fresh`, those whose tag is being called right now wait for that call."""
        group = list(group)
        if not self.enabled:
            return group
        now = time.monotonic()
        busy = {_key(item) for item in calling if item.taken.request}
        go: list[Item] = []
        for item in group:
            if item.taken.request is None:
                go.append(item)
                continue
            key = _key(item)
            expires = self._fetched.get(key)
            if expires is not None and expires > now:
                self._skip(item, datetime.now(UTC).timestamp() + (expires - now))
            elif key in busy and item.stage is Stage.BUFFERED:
                continue  # stays buffered: the call in flight answers for it
            else:
                go.append(item)
                busy.add(key)
        return go

    def _skip(self, item: Item, until: datetime | float) -> None:
        if not isinstance(until, datetime):
            until = datetime.fromtimestamp(until, UTC)
        row = self.books.row(item, Outcome.SKIPPED_FRESH, Reason.FRESH, fresh_detail(until))
        self.books.record(item, row)
