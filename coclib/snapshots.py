"""Snapshot upserts: the latest API JSON per player, clan and clan's current war."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
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
    """One fetched body. `fetched_at` (unix seconds) orders writers: older never overwrites newer."""

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


def arrays_by_kind(snapshots: Iterable[Snapshot]) -> dict[str, dict[str, list[Any]]]:
    """The parameters of each kind's upsert: parallel arrays of tags, bodies and fetch times."""
    by_kind: dict[str, dict[str, list[Any]]] = defaultdict(lambda: {"tag": [], "data": [], "fetched_at": []})
    for snap in snapshots:
        arrays = by_kind[snap.kind]
        arrays["tag"].append(snap.tag)
        arrays["data"].append(snap.data)
        arrays["fetched_at"].append(datetime.fromtimestamp(snap.fetched_at, UTC))
    return by_kind


async def upsert_snapshots(
    db: Database, conn: psycopg.AsyncConnection, snapshots: Iterable[Snapshot]
) -> None:
    """Upsert every snapshot on `conn` (the caller's transaction): one statement per kind."""
    queries = load_queries()
    for kind, arrays in arrays_by_kind(snapshots).items():
        await db.run(conn, queries[UPSERT_BY_KIND[kind]], arrays)
