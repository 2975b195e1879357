"""Snapshot upserts: the latest API JSON per player, clan and clan's current war.

Each snapshot carries how long the API said its body stays fresh and a hash of the body: the
upsert stores until when it is fresh (on Postgres's clock) and rewrites `data` only when the
hash differs from the stored one, reporting per tag whether it did (`changed`).
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format

from coclib.db import Database
from coclib.errors import RequestError
from coclib.reasons import Reason
from coclib.sqlfiles import load_queries
from coclib.storable import json_problem

# Where each kind's snapshots live: its table and key column, filled into the one upsert
# (`sql/queries.sql`, upsert_snapshots).
SNAPSHOT_TABLES = {"player": ("players", "tag"), "clan": ("clans", "tag"), "war": ("wars", "clan_tag")}


def upsert_query(kind: str, template: str | None = None) -> sql.Composed:
    """The upsert of one kind's snapshots: `template` (by default the named query
    upsert_snapshots) with the kind's table and key column filled in."""
    return _fill(template or load_queries()["upsert_snapshots"], *SNAPSHOT_TABLES[kind])


@functools.cache
def _fill(template: str, table: str, key: str) -> sql.Composed:
    # Once per template and kind: composing costs more than the hot path should pay per batch.
    return sql.SQL(template).format(table=sql.Identifier(table), key=sql.Identifier(key))


class JsonText(bytes):
    """A JSON document already serialised: checked once, sent to Postgres as it is."""


class _JsonTextBinaryDumper(Dumper):
    # jsonb's binary format is a version byte and the JSON text. The body is serialised once,
    # when it is checked for storability, and never again (psycopg's Jsonb would dump it anew).
    format = Format.BINARY
    oid = psycopg.postgres.types["jsonb"].oid

    def dump(self, obj: JsonText) -> bytes:
        return b"\x01" + obj


psycopg.adapters.register_dumper(JsonText, _JsonTextBinaryDumper)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One fetched body. `fetched_at` (unix seconds on this process's clock) orders writers: older
    never overwrites newer. What is stored is Postgres's time of the fetch (`arrays_by_kind`).

    `fresh_until` is when the API's cached copy expires, a `time.monotonic()` value (None: not
    fresh); what is left of it when the batch is written becomes the row's `fresh_until`.
    `data_hash` identifies the body: an equal hash is an unchanged body.
    """

    kind: str
    tag: str
    data: JsonText
    fetched_at: float
    fresh_until: float | None = None
    data_hash: bytes = b""

    def __post_init__(self) -> None:
        if not self.data_hash:
            object.__setattr__(self, "data_hash", body_hash(self.data))


def body_hash(document: bytes) -> bytes:
    """A 16-byte BLAKE2b of a serialised body: about 30 µs of worker CPU for 23 KB, and a 16-byte
    compare in Postgres instead of reading back, decompressing and comparing the stored 23 KB
    (0.13 against 0.65 ms of Postgres time per unchanged row: bench/freshness.md)."""
    return hashlib.blake2b(document, digest_size=16).digest()


def snapshot_of(
    kind: str,
    tag: str,
    body: dict[str, Any] | bytes,
    fetched_at: float,
    *,
    fresh_until: float | None = None,
) -> Snapshot:
    """The snapshot of an API body, or `RequestError` (`unstorable`) if jsonb cannot hold it.

    `body` is the parsed body, or its JSON text as the API sent it (`Fetched.raw`, validated
    when read: valid JSON and UTF-8): the text is stored as it is, never serialised again.
    """
    if isinstance(body, bytes):
        document = body
    else:
        try:
            document = orjson.dumps(body)
        except orjson.JSONEncodeError as exc:
            raise RequestError(Reason.UNSTORABLE, f"the body cannot be written as JSON: {exc}") from None
    problem = json_problem(document)
    if problem is not None:
        raise RequestError(Reason.UNSTORABLE, problem)
    return Snapshot(kind, tag, JsonText(document), fetched_at, fresh_until)


def _arrays() -> dict[str, list[Any]]:
    return {"tag": [], "data": [], "age": [], "fresh_for": [], "data_hash": []}


def arrays_by_kind(
    snapshots: Iterable[Snapshot], *, now: Callable[[], float] = time.time
) -> dict[str, dict[str, list[Any]]]:
    """The parameters of each kind's upsert: parallel arrays of tags, bodies, ages, how long each
    stays fresh from now, and the bodies' hashes.

    An age is how long ago the body was fetched, on this process's clock (`now`, the clock
    `fetched_at` was read from): Postgres dates the snapshot by its own clock less that age, so
    a process whose clock is off still dates it right (sql/queries.sql, upsert_snapshots). The
    freshness left is measured the same way, on the monotonic clock `fresh_until` was read from
    (None: not fresh), and Postgres adds it to its own clock.
    """
    by_kind: dict[str, dict[str, list[Any]]] = defaultdict(_arrays)
    at, mono = now(), time.monotonic()
    for snap in snapshots:
        arrays = by_kind[snap.kind]
        arrays["tag"].append(snap.tag)
        arrays["data"].append(snap.data)
        arrays["age"].append(max(0.0, at - snap.fetched_at))
        left = None if snap.fresh_until is None else snap.fresh_until - mono
        arrays["fresh_for"].append(left if left is not None and left > 0 else None)
        arrays["data_hash"].append(snap.data_hash)
    return by_kind


async def upsert_snapshots(
    db: Database, conn: psycopg.AsyncConnection, snapshots: Iterable[Snapshot]
) -> dict[tuple[str, str], bool]:
    """Upsert every snapshot on `conn` (the caller's transaction): one statement per kind.

    Returns, per (kind, tag) stored, whether its body changed. A tag missing from the result
    was not stored: a newer fetch of it already was.
    """
    changed: dict[tuple[str, str], bool] = {}
    for kind, arrays in arrays_by_kind(snapshots).items():
        for row in await db.fetch_all_on(conn, upsert_query(kind), arrays):
            changed[(kind, row["tag"])] = row["changed"]
    return changed
