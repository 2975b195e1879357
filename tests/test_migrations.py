"""The migration runner: ordered, recorded, idempotent, safe when run concurrently."""

from __future__ import annotations

import re
import threading

import psycopg
import pytest

from coclib.migrations import MIGRATIONS_DIR, discover, migrate
from coclib.snapshots import SNAPSHOT_TABLES, upsert_query
from coclib.sqlfiles import load_queries, parse_queries


def test_migrations_apply_in_order_once(empty_database_url):
    names = [m.path.name for m in discover()]
    assert names == sorted(names) and names[0] == "0001_initial.sql"

    assert migrate(empty_database_url) == names
    assert migrate(empty_database_url) == []
    with psycopg.connect(empty_database_url) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert versions == [m.version for m in discover()]
    assert {"players", "clans", "wars", "refresh_ledger", "refresh_run_summaries"} <= tables


def test_concurrent_migrations_apply_each_file_exactly_once(empty_database_url):
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(empty_database_url))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    applied = [name for r in results for name in r]
    assert sorted(applied) == sorted(m.path.name for m in discover())


def test_a_broken_migration_rolls_back_whole_and_is_not_recorded(empty_database_url, tmp_path):
    (tmp_path / "0001_initial.sql").write_text((MIGRATIONS_DIR / "0001_initial.sql").read_text())
    (tmp_path / "0002_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;\n"
    )
    with pytest.raises(psycopg.errors.UndefinedTable):
        migrate(empty_database_url, tmp_path)
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT to_regclass('half_done')").fetchone()[0] is None
        assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations")] == [1]


def test_badly_named_or_duplicate_files_are_refused(tmp_path):
    (tmp_path / "1_x.sql").write_text("SELECT 1")
    with pytest.raises(ValueError, match=r"NNNN_name\.sql"):
        discover(tmp_path)
    (tmp_path / "1_x.sql").unlink()
    (tmp_path / "0001_a.sql").write_text("SELECT 1")
    (tmp_path / "0001_b.sql").write_text("SELECT 1")
    with pytest.raises(ValueError, match="used twice"):
        discover(tmp_path)


def test_named_queries_parse_and_every_one_is_valid_sql(database_url):
    queries = load_queries()
    assert {"insert_ledger_rows", "upsert_snapshots", "settled_requests", "ping"} <= set(queries)
    with pytest.raises(ValueError, match="twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")
    with psycopg.connect(database_url) as conn:
        # The snapshot upsert is a template: checked as each kind fills it in.
        texts = {name: sql for name, sql in queries.items() if name != "upsert_snapshots"}
        texts |= {f"upsert_{kind}": upsert_query(kind).as_string(conn) for kind in SNAPSHOT_TABLES}
        for name, sql in texts.items():
            # PREPARE checks syntax and every referenced object without running anything.
            text = sql.rstrip(";")
            text = re.sub(r"%\(\w+\)[sb]", "NULL", text)
            conn.execute(f"PREPARE check_{name} AS {text}")
