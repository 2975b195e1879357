"""Reason codes: none can be mistaken for another, and a rename keeps the ledger's history."""

from __future__ import annotations

import shutil
import uuid

import psycopg

from coclib.migrations import discover, migrate
from coclib.reasons import Reason
from tests.helpers import migrate_before

RENAMED = "0006_api_down_reason.sql"


def test_no_code_begins_with_another():
    """`upstream` (the API is down) beside `upstream_error` (one 5xx) was read as one for the
    other, and `cause.startswith("upstream")` accepted both."""
    codes = [reason.value for reason in Reason]
    assert [(a, b) for a in codes for b in codes if a != b and b.startswith(a)] == []


def test_the_rename_keeps_rows_written_as_upstream_and_says_so(empty_database_url, tmp_path):
    """The ledger and the run summaries are append-only: the migration may not rewrite them, so
    it must apply over rows holding `upstream`, keep them, and document the old code."""
    renamed = next(m for m in discover() if m.path.name == RENAMED)
    migrate_before(empty_database_url, renamed.version, tmp_path)
    run_id = uuid.uuid4()
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO refresh_ledger (request_id, run_id, kind, tag, outcome, reason)"
            " VALUES ('r1', %s, 'player', '#2PP', 'deferred', 'upstream')",
            (run_id,),
        )
        conn.execute(
            "INSERT INTO refresh_run_summaries (run_id, started_at, finished_at, stopped, cause, summary)"
            " VALUES (%s, now(), now(), 'circuit_open', 'upstream', '{}')",
            (run_id,),
        )

    shutil.copy(renamed.path, tmp_path)
    assert migrate(empty_database_url, tmp_path) == [RENAMED]

    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO refresh_ledger (request_id, run_id, kind, tag, outcome, reason)"
            " VALUES ('r2', %s, 'player', '#2PQ', 'deferred', %s)",
            (run_id, Reason.API_DOWN.value),
        )
        reasons = [r[0] for r in conn.execute("SELECT reason FROM refresh_ledger ORDER BY id")]
        causes = [r[0] for r in conn.execute("SELECT cause FROM refresh_run_summaries")]
        comments = [
            conn.execute(
                "SELECT col_description(%s::regclass, a.attnum) FROM pg_attribute a"
                " WHERE a.attrelid = %s::regclass AND a.attname = %s",
                (table, table, column),
            ).fetchone()[0]
            for table, column in (("refresh_ledger", "reason"), ("refresh_run_summaries", "cause"))
        ]
    assert reasons == ["upstream", "api_down"] and causes == ["upstream"]
    for comment in comments:
        assert "api_down was written upstream before migration 0006" in comment
