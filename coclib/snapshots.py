"""Snapshot upserts: the latest API JSON per player, clan and clan's current war."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

from coclib.db import Database
from coclib.errors import RequestError
from coclib.reasons import Reason
from coclib.sqlfiles import load_queries
from coclib.storable import json_problem

UPSERT_BY_KIND = {"player": "upsert_players", "clan": "upsert_clans", "war": "upsert_wars"}


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
    never overwrites newer. What is stored is Postgres's time of the fetch (`arrays_by_kind`)."""

    kind: str
    tag: str
    data: JsonText
    fetched_at: float


def snapshot_of(
    kind: str, tag: str, body: dict[str, Any], fetched_at: float, raw: bytes | None = None
) -> Snapshot:
    """The snapshot of an API body, or `RequestError` (`unstorable`) if jsonb cannot hold it.

    `raw` is the JSON text `body` was parsed from, if known: it is stored as it is (orjson
    parsed it, so it is valid JSON without lone surrogates), instead of serialising `body` again.
    """
    if raw is not None:
        document = raw
    else:
        try:
            document = orjson.dumps(body)
        except orjson.JSONEncodeError as exc:
            raise RequestError(Reason.UNSTORABLE, f"the body cannot be written as JSON: {exc}") from None
    problem = json_problem(document)
    if problem is not None:
        raise RequestError(Reason.UNSTORABLE, problem)
    return Snapshot(kind, tag, JsonText(document), fetched_at)


def arrays_by_kind(
    snapshots: Iterable[Snapshot], *, now: Callable[[], float] = time.time
) -> dict[str, dict[str, list[Any]]]:
    """The parameters of each kind's upsert: parallel arrays of tags, bodies and ages.

    An age is how long ago the body was fetched, on this process's clock (`now`, the clock
    `fetched_at` was read from): Postgres dates the snapshot by its own clock less that age, so
    a process whose clock is off still dates it right (sql/queries.sql, upsert_players).
    """
    by_kind: dict[str, dict[str, list[Any]]] = defaultdict(lambda: {"tag": [], "data": [], "age": []})
    at = now()
    for snap in snapshots:
        arrays = by_kind[snap.kind]
        arrays["tag"].append(snap.tag)
        arrays["data"].append(snap.data)
        arrays["age"].append(max(0.0, at - snap.fetched_at))
    return by_kind


async def upsert_snapshots(
    db: Database, conn: psycopg.AsyncConnection, snapshots: Iterable[Snapshot]
) -> None:
    """Upsert every snapshot on `conn` (the caller's transaction): one statement per kind."""
    queries = load_queries()
    for kind, arrays in arrays_by_kind(snapshots).items():
        await db.run(conn, queries[UPSERT_BY_KIND[kind]], arrays)
