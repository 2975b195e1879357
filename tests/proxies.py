"""TCP proxies that cut the worker off from Postgres or Redis at the worst moment.

Each listens on 127.0.0.1 and forwards to the real server, wherever it listens (a TCP port,
or the Unix socket of an embedded server). `die()` aborts every connection and refuses new
ones: to the worker, the server is gone.
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import parse_qs, urlsplit

import psycopg

Endpoint = tuple[str, int] | str  # (host, port), or a Unix socket's path


def postgres_endpoint(conninfo: str) -> Endpoint:
    """Where a Postgres URL's server really listens."""
    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    host, port = info.get("host") or "127.0.0.1", int(info.get("port") or 5432)
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def redis_endpoint(url: str) -> tuple[Endpoint, int]:
    """Where a Redis URL's server really listens, and the database number it names."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path, int(parse_qs(parts.query).get("db", ["0"])[0])
    return (parts.hostname or "127.0.0.1", parts.port or 6379), int(parts.path.strip("/") or 0)


class CuttableProxy:
    """Forwards every connection to `target` until `die()`."""

    def __init__(self, target: Endpoint) -> None:
        self.target = target
        self.cut = False
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def listen(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def die(self) -> None:
        self.cut = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def relay(self, client: asyncio.StreamReader, server: asyncio.StreamWriter, link: dict) -> None:
        """Client to server, for one connection (`link`: its own notes); the other way is
        `relay_back`. Plain bytes unless overridden."""
        await _pipe(client, server)

    async def relay_back(
        self, server: asyncio.StreamReader, client: asyncio.StreamWriter, link: dict
    ) -> None:
        await _pipe(server, client)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.cut:
            client_w.transport.abort()
            return
        if isinstance(self.target, str):
            server_r, server_w = await asyncio.open_unix_connection(self.target)
        else:
            server_r, server_w = await asyncio.open_connection(*self.target)
        self._writers |= {client_w, server_w}
        link: dict = {}
        tasks = [
            asyncio.ensure_future(self.relay(client_r, server_w, link)),
            asyncio.ensure_future(self.relay_back(server_r, client_w, link)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for writer in (client_w, server_w):
                writer.transport.abort()
                self._writers.discard(writer)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


class RedisProxy(CuttableProxy):
    """Redis through a cuttable proxy: the run meets an outage wherever the cut falls."""

    def __init__(self, url: str) -> None:
        target, self.db = redis_endpoint(url)
        super().__init__(target)

    async def start(self) -> str:
        return f"redis://127.0.0.1:{await self.listen()}/{self.db}"


class PostgresProxy(CuttableProxy):
    """A proxy to Postgres that dies, for good, right after the server commits the k-th commit.

    It reads the protocol's message framing in both directions (no TLS: the URL it hands out
    says sslmode=disable). A commit is a COMMIT a client sends, or a statement that writes
    (INSERT, UPDATE, DELETE) sent outside a transaction block, which Postgres commits on its own
    (autocommit). When the server's answer to the k-th one comes back (CommandComplete for a
    COMMIT; ReadyForQuery, sent once the statement's implicit transaction committed, for the
    other), every connection is cut before it reaches the client, and new connections are
    refused. The client cannot know its transaction committed: Postgres died at the worst moment.
    """

    def __init__(self, conninfo: str, cut_at_commit: int) -> None:
        super().__init__(postgres_endpoint(conninfo))
        self.conninfo = conninfo
        self.cut_at = cut_at_commit
        self.commits = 0

    async def start(self) -> str:
        info = psycopg.conninfo.conninfo_to_dict(self.conninfo)
        info.update(host="127.0.0.1", port=str(await self.listen()), sslmode="disable", gssencmode="disable")
        return psycopg.conninfo.make_conninfo(**info)

    async def relay(self, client: asyncio.StreamReader, server: asyncio.StreamWriter, link: dict) -> None:
        _, body = await _message(client, typed=False)  # the startup message
        server.write(body)
        statements: dict[bytes, bytes] = {}  # prepared statement name -> its text
        while True:
            kind, body = await _message(client)
            text = b""
            if kind == b"Q":
                text = body[4:]
            elif kind == b"P":  # Parse: statement name, text
                name, text, _ = body[4:].split(b"\0", 2)
                statements[name] = text
            elif kind == b"B":  # Bind: portal name, statement name
                text = statements.get(body[4:].split(b"\0", 2)[1], b"")
            if kind in (b"Q", b"B"):
                if text.lstrip().startswith(b"COMMIT"):
                    self._count(link, "COMMIT")
                elif link.get("idle", True) and _WRITES.search(text):
                    self._count(link, "autocommit")
            server.write(kind + body)
            await server.drain()

    def _count(self, link: dict, how: str) -> None:
        self.commits += 1
        if self.commits == self.cut_at:
            link["armed"] = how  # this connection's answer to it is the one never delivered

    async def relay_back(
        self, server: asyncio.StreamReader, client: asyncio.StreamWriter, link: dict
    ) -> None:
        while True:
            kind, body = await _message(server)
            armed = link.get("armed")
            if (armed == "COMMIT" and kind == b"C" and body[4:].startswith(b"COMMIT")) or (
                armed == "autocommit" and kind == b"Z"
            ):
                await self.die()  # committed on the server; the client never hears of it
                return
            if kind == b"Z":  # ReadyForQuery: I idle, T in a transaction block, E failed one
                link["idle"] = body[4:5] == b"I"
            client.write(kind + body)
            await client.drain()


_WRITES = re.compile(rb"\b(INSERT|UPDATE|DELETE)\b")


async def _message(reader: asyncio.StreamReader, typed: bool = True) -> tuple[bytes, bytes]:
    kind = await reader.readexactly(1) if typed else b""
    head = await reader.readexactly(4)
    return kind, head + await reader.readexactly(int.from_bytes(head, "big") - 4)


class RedisCommandCutter(RedisProxy):
    """Redis through a proxy that cuts any connection the moment it carries `marker` (a command,
    or a script's text), every time: the client's retries meet the same fate. Everything else
    passes, so the run meets a Redis that fails exactly one kind of command."""

    def __init__(self, url: str, marker: bytes) -> None:
        super().__init__(url)
        self.marker = marker
        self.cuts = 0

    async def relay(self, client: asyncio.StreamReader, server: asyncio.StreamWriter, link: dict) -> None:
        tail = b""  # the end of the last chunk: a marker may straddle two reads
        while data := await client.read(65536):
            if self.marker in tail + data:
                self.cuts += 1
                return  # the connection is torn down, the command never reaches the server
            tail = data[-len(self.marker) :]
            server.write(data)
            await server.drain()
