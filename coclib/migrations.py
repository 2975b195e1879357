"""Apply `sql/migrations/NNNN_name.sql` in order, once each, safely from many processes.

The files are the `sql` package's data, found by `coclib.sqlfiles` through `importlib.resources`,
so a wheel, the repository and the Lambda layout (coclib in the layer, sql in the function) all
migrate from the same files.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

from coclib.errors import DatabaseUnavailable
from coclib.errortext import first_line
from coclib.sqlfiles import SQL_DIR

log = logging.getLogger(__name__)

MIGRATIONS_DIR = SQL_DIR / "migrations"
_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
# A fixed advisory-lock key ("cocm" in ASCII): every migrating process queues on it.
_LOCK_KEY = 0x636F636D

_LEDGER_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in version order; a duplicate version is an error."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise ValueError(f"{path.name}: migration files are named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"{path.name}: version {version} is used twice")
        found[version] = Migration(version, match.group(2), path)
    return [found[v] for v in sorted(found)]


def migrate(conninfo: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration; return the names applied (empty when up to date).

    A session advisory lock serialises concurrent callers: the second one waits, then
    finds everything applied. Each migration commits in its own transaction together
    with its `schema_migrations` row.
    """
    migrations = discover(directory)
    try:
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(first_line(exc)) from exc
    applied_now: list[str] = []
    with conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(_LEDGER_TABLE)
            done = dict(conn.execute("SELECT version, checksum FROM schema_migrations").fetchall())
            for migration in migrations:
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        log.warning("migration %s changed after it was applied", migration.path.name)
                    continue
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                log.info("applied migration %s", migration.path.name)
                applied_now.append(migration.path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now
