"""The partitioned ledger: migrating keeps every row, every partition refuses change,
partitions are made ahead, and retention drops whole old partitions and nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from coclib.db import Database
from coclib.migrations import discover, migrate
from ledger.__main__ import main as ledger_main
from ledger.partitions import apply_retention, ensure_partitions
from tests.helpers import migrate_before
from tests.invariants import check_open_attempts

ROW = (
    "INSERT INTO refresh_ledger (request_id, run_id, kind, tag, outcome, reason, occurred_at) "
    "VALUES (%s, '11111111-1111-4111-8111-111111111111', 'player', '#2PP', %s, %s, %s)"
)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as c:
        # The session's template was migrated when the session began, maybe before midnight
        # (UTC): make today's and the next three days' partitions now, as migrate would.
        c.execute("SELECT refresh_ledger_ensure_partitions(3)")
        yield c


def today() -> date:
    return datetime.now(UTC).date()


def noon(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, 12, tzinfo=UTC)


def partitions(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    rows = conn.execute("SELECT partition::text AS name, * FROM refresh_ledger_partitions").fetchall()
    return {r["name"]: r for r in rows}


def where(conn: psycopg.Connection) -> dict[str, int]:
    """Rows per partition, counted (not estimated)."""
    rows = conn.execute(
        "SELECT tableoid::regclass::text AS part, count(*) AS n FROM refresh_ledger GROUP BY 1"
    ).fetchall()
    return {r["part"]: r["n"] for r in rows}


def name(day: date) -> str:
    return f"refresh_ledger_p{day:%Y%m%d}"


def check_derived_tables(conn: psycopg.Connection) -> None:
    """refresh_ledger_minutes holds exactly the ledger's counts, both ways, and
    refresh_open_attempts exactly its open attempts."""
    counted = """
        SELECT date_bin('1 minute', occurred_at, timestamptz '2000-01-01 00:00:00+00'), run_id,
               outcome, count(*), min(occurred_at), max(occurred_at)
        FROM refresh_ledger GROUP BY 1, 2, 3"""
    kept = "SELECT minute, run_id, outcome, rows, first_at, last_at FROM refresh_ledger_minutes"
    diff = conn.execute(f"({counted} EXCEPT {kept}) UNION ALL ({kept} EXCEPT {counted})").fetchall()
    assert diff == [], f"refresh_ledger_minutes disagrees with the ledger: {diff[:3]}"
    check_open_attempts(
        conn.execute("SELECT * FROM refresh_open_attempts").fetchall(),
        conn.execute("SELECT * FROM refresh_ledger").fetchall(),
    )


# -- migrating an existing ledger ----------------------------------------------------------


def test_migrating_an_unpartitioned_ledger_keeps_every_row(empty_database_url: str, tmp_path: Path):
    assert migrate_before(empty_database_url, 2, tmp_path / "migrations") == ["0001_initial.sql"]

    now = datetime.now(UTC)
    times = [
        now - timedelta(days=3),
        now - timedelta(days=1, minutes=5),
        now - timedelta(minutes=30),
        now,
        datetime(2020, 1, 1, 23, 59, 59, tzinfo=UTC),
    ]
    with psycopg.connect(empty_database_url, autocommit=True, row_factory=dict_row) as c:
        for i, at in enumerate(times):
            c.execute(ROW, (f"r{i}", "attempted", None, at))
            c.execute(ROW, (f"r{i}", "failed", "not_found", at + timedelta(seconds=1)))
        with pytest.raises(psycopg.errors.CheckViolation), c.transaction():
            c.execute(ROW, ("bad", "failed", None, now))  # burns an id, as a rolled-back insert would
        c.execute(
            "INSERT INTO refresh_run_summaries VALUES ('11111111-1111-4111-8111-111111111111', "
            "now(), now(), 'queue_empty', NULL, '{}')"
        )
        before = c.execute("SELECT * FROM refresh_ledger ORDER BY id").fetchall()
        last_id = c.execute("SELECT last_value FROM refresh_ledger_id_seq").fetchone()["last_value"]

    assert migrate(empty_database_url) == [m.path.name for m in discover()][1:]

    with psycopg.connect(empty_database_url, autocommit=True, row_factory=dict_row) as c:
        # Every row as it was; columns added since (0009's `changed`) are NULL on old rows.
        after = c.execute("SELECT * FROM refresh_ledger ORDER BY id").fetchall()
        assert [{k: r[k] for k in before[0]} for r in after] == before
        assert {r["changed"] for r in after} == {None}
        assert (
            c.execute("SELECT relkind FROM pg_class WHERE relname = 'refresh_ledger'").fetchone()["relkind"]
            == "p"
        )
        # Each old day has its partition (23:59:59 and the second after it fall either side of
        # midnight UTC); nothing fell into the default.
        placed = where(c)
        assert "refresh_ledger_default" not in placed
        assert placed[name(date(2020, 1, 1))] == placed[name(date(2020, 1, 2))] == 1
        assert sum(placed.values()) == len(before)
        # New ids continue after every id ever handed out, including the rolled-back one.
        c.execute(ROW, ("new", "attempted", None, now))
        new_id = c.execute("SELECT max(id) AS id FROM refresh_ledger").fetchone()["id"]
        assert new_id == last_id + 1 > max(r["id"] for r in before)
        check_derived_tables(c)
        assert c.execute("SELECT count(*) AS n FROM refresh_run_summaries").fetchone()["n"] == 1
        assert c.execute("SELECT count(*) AS n FROM refresh_runs").fetchone()["n"] == 1
        # The views came back and read the new table.
        assert len(c.execute("SELECT * FROM refresh_failures").fetchall()) == len(times)
        assert c.execute("SELECT failed FROM refresh_health").fetchone()["failed"] == 2  # now - 30 min, now
        gone = {
            r["name"]
            for r in c.execute(
                "SELECT relname AS name FROM pg_class WHERE relname LIKE 'refresh_ledger_0001%'"
            )
        }
        assert gone == set()


def test_migrating_tracks_the_attempts_already_open(empty_database_url: str, tmp_path: Path):
    """0012 fills refresh_open_attempts from the ledger it finds; the trigger keeps it after."""
    migrate_before(empty_database_url, 12, tmp_path / "migrations")
    dead, later = "22222222-2222-4222-8222-222222222222", "33333333-3333-4333-8333-333333333333"
    now = datetime.now(UTC)
    rows = [  # (request, run, outcome, minutes ago)
        ("lost", dead, "attempted", 50),
        ("settled", dead, "attempted", 50),
        ("settled", dead, "fetched", 49),
        ("requeued", dead, "attempted", 48),
        ("requeued", later, "attempted", 40),
        ("requeued", later, "fetched", 39),
        ("running", later, "attempted", 0),
    ]
    with psycopg.connect(empty_database_url, autocommit=True, row_factory=dict_row) as c:
        for request_id, run_id, outcome, ago in rows:
            c.execute(
                "INSERT INTO refresh_ledger (request_id, run_id, kind, tag, outcome, occurred_at) "
                "VALUES (%s, %s, 'player', '#2PP', %s, %s)",
                (request_id, run_id, outcome, now - timedelta(minutes=ago)),
            )

    assert migrate(empty_database_url) == [m.path.name for m in discover() if m.version >= 12]

    with psycopg.connect(empty_database_url, autocommit=True, row_factory=dict_row) as c:
        kept = c.execute("SELECT request_id FROM refresh_open_attempts ORDER BY occurred_at").fetchall()
        assert [r["request_id"] for r in kept] == ["lost", "running"]
        check_derived_tables(c)
        c.execute(ROW, ("running", "fetched", None, datetime.now(UTC)))
        check_derived_tables(c)
        orphans = c.execute(
            "SELECT request_id FROM refresh_orphaned_attempts_between(%s, 'infinity')",
            (now - timedelta(hours=1),),
        ).fetchall()
        assert [r["request_id"] for r in orphans] == ["lost"]


# -- immutability on every partition --------------------------------------------------------


def test_every_partition_refuses_update_delete_and_truncate(conn: psycopg.Connection):
    now = datetime.now(UTC)
    conn.execute(ROW, ("a", "attempted", None, now))  # today's partition
    conn.execute(ROW, ("b", "attempted", None, now + timedelta(days=2)))  # a partition made ahead
    conn.execute(ROW, ("c", "attempted", None, datetime(2020, 1, 1, tzinfo=UTC)))  # no partition: the default
    placed = where(conn)
    assert placed == {name(today()): 1, name(today() + timedelta(days=2)): 1, "refresh_ledger_default": 1}

    for table in ["refresh_ledger", *partitions(conn)]:
        for statement in (f"UPDATE {table} SET reason = 'x'", f"DELETE FROM {table}", f"TRUNCATE {table}"):
            if table not in placed and table != "refresh_ledger" and not statement.startswith("TRUNCATE"):
                continue  # a row trigger has no row to refuse in an empty partition
            with pytest.raises(psycopg.errors.FeatureNotSupported, match="append-only"):
                conn.execute(statement)
    assert where(conn) == placed


def test_moving_a_row_to_another_partition_is_refused_too(conn: psycopg.Connection):
    conn.execute(ROW, ("a", "attempted", None, datetime.now(UTC)))
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        conn.execute("UPDATE refresh_ledger SET occurred_at = occurred_at + interval '1 day'")


def test_a_partition_made_by_hand_is_guarded_once_ensure_runs(conn: psycopg.Connection):
    conn.execute(
        "CREATE TABLE refresh_ledger_by_hand PARTITION OF refresh_ledger "
        "FOR VALUES FROM ('2031-01-01 00:00+00') TO ('2031-01-02 00:00+00')"
    )
    conn.execute("TRUNCATE refresh_ledger_by_hand")  # the parent's statement trigger does not cover it…
    conn.execute("SELECT refresh_ledger_ensure_partitions(3)")
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        conn.execute("TRUNCATE refresh_ledger_by_hand")  # …ensure gave it its own


def test_ids_come_from_the_parents_identity_only(conn: psycopg.Connection):
    direct = (
        f"INSERT INTO {name(today())} (request_id, run_id, outcome) "
        "VALUES ('x', gen_random_uuid(), 'attempted') RETURNING id"
    )
    if conn.info.server_version < 170000:
        # Up to PostgreSQL 16 a partition has no identity of its own: a writer must go
        # through refresh_ledger.
        with pytest.raises(psycopg.errors.NotNullViolation):
            conn.execute(direct)
        return
    # From 17 on, partitions share the parent's identity sequence: a direct insert draws
    # from it too, so ids stay unique and in insertion order whichever way a row came in.
    via_parent = conn.execute(
        "INSERT INTO refresh_ledger (request_id, run_id, outcome) "
        "VALUES ('y', gen_random_uuid(), 'attempted') RETURNING id"
    ).fetchone()["id"]
    assert conn.execute(direct).fetchone()["id"] == via_parent + 1


# -- partitions ahead ------------------------------------------------------------------------


def test_migrate_made_today_and_three_days_ahead_and_ensure_is_idempotent(conn: psycopg.Connection):
    days = [today() + timedelta(days=d) for d in range(4)]
    assert {name(d) for d in days} <= set(partitions(conn))
    assert conn.execute("SELECT refresh_ledger_ensure_partitions(3) AS n").fetchone()["n"] == 0
    assert conn.execute("SELECT refresh_ledger_ensure_partitions(5) AS n").fetchone()["n"] == 2
    made = partitions(conn)[name(today() + timedelta(days=5))]
    assert made["range_start"] == datetime.combine(today() + timedelta(days=5), datetime.min.time(), UTC)
    assert made["range_end"] - made["range_start"] == timedelta(days=1)


def test_a_day_whose_rows_are_in_the_default_is_left_there(conn: psycopg.Connection):
    stray = today() + timedelta(days=7)
    conn.execute(ROW, ("s", "attempted", None, noon(stray)))  # no partition yet: into the default
    assert (
        conn.execute("SELECT refresh_ledger_ensure_partitions(9) AS n").fetchone()["n"] == 5
    )  # +4…+9 but +7
    assert name(stray) not in partitions(conn)
    assert where(conn) == {"refresh_ledger_default": 1}
    conn.execute(ROW, ("s2", "attempted", None, noon(stray)))  # still accepted
    assert where(conn) == {"refresh_ledger_default": 2}


def test_the_worker_helper_makes_partitions_and_never_raises(database_url: str):
    async def go(url: str) -> int | None:
        db = await Database.open(url, connect_timeout=1)
        try:
            return await ensure_partitions(db, days_ahead=6)
        finally:
            await db.close()

    assert asyncio.run(go(database_url)) == 3
    assert asyncio.run(go(database_url)) == 0
    assert asyncio.run(go("postgresql://postgres@127.0.0.1:1/nowhere")) is None


# -- retention -------------------------------------------------------------------------------


def _aged_ledger(conn: psycopg.Connection) -> dict[str, int]:
    """Rows today and 5, 8 and 10 days ago (each in its partition), and one from 2020 (default)."""
    for ago in (10, 8, 5):
        conn.execute("SELECT refresh_ledger_create_partition(%s)", (today() - timedelta(days=ago),))
        conn.execute(ROW, (f"d{ago}", "attempted", None, noon(today() - timedelta(days=ago))))
        conn.execute(
            ROW, (f"d{ago}", "fetched", None, noon(today() - timedelta(days=ago)) + timedelta(seconds=1))
        )
    # An attempt never settled (its run died, the request was lost): dropped with its day.
    conn.execute(ROW, ("lost", "attempted", None, noon(today() - timedelta(days=10))))
    conn.execute(ROW, ("now", "attempted", None, datetime.now(UTC)))
    conn.execute(ROW, ("old", "failed", "not_found", datetime(2020, 1, 1, tzinfo=UTC)))
    return where(conn)


def test_retention_drops_whole_old_partitions_and_nothing_else(conn: psycopg.Connection):
    placed = _aged_ledger(conn)
    kept_rows = conn.execute(
        "SELECT * FROM refresh_ledger WHERE occurred_at > now() - interval '7 days' ORDER BY id"
    ).fetchall()
    would = conn.execute("SELECT partition::text AS p FROM refresh_ledger_expired_partitions(7)").fetchall()

    dropped = conn.execute("SELECT * FROM refresh_ledger_drop_partitions_older_than(7)").fetchall()

    old = {name(today() - timedelta(days=10)), name(today() - timedelta(days=8)), "refresh_ledger_default"}
    assert {r["partition"] for r in dropped} == {r["p"] for r in would} == old
    assert conn.execute("SELECT * FROM refresh_ledger ORDER BY id").fetchall() == kept_rows
    assert where(conn) == {k: v for k, v in placed.items() if k not in old}
    assert not old - {"refresh_ledger_default"} & set(partitions(conn))
    assert partitions(conn)["refresh_ledger_default"]["is_default"]  # recreated, empty…
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        conn.execute("TRUNCATE refresh_ledger_default")  # …and guarded
    check_derived_tables(conn)
    # Nothing left to drop; the ledger still refuses row changes.
    assert conn.execute("SELECT * FROM refresh_ledger_drop_partitions_older_than(7)").fetchall() == []
    with pytest.raises(psycopg.errors.FeatureNotSupported):
        conn.execute("DELETE FROM refresh_ledger")


def test_retention_keeps_a_default_partition_with_a_young_row(conn: psycopg.Connection):
    conn.execute(ROW, ("old", "attempted", None, datetime(2020, 1, 1, tzinfo=UTC)))
    conn.execute(ROW, ("future", "attempted", None, noon(today() + timedelta(days=30))))
    assert conn.execute("SELECT * FROM refresh_ledger_drop_partitions_older_than(1)").fetchall() == []
    assert where(conn) == {"refresh_ledger_default": 2}


def test_retention_keeps_at_least_a_day(conn: psycopg.Connection):
    for days in (0, -1):
        with pytest.raises(psycopg.errors.RaiseException, match="at least 1 day"):
            conn.execute("SELECT * FROM refresh_ledger_drop_partitions_older_than(%s)", (days,))


def test_retention_and_partitions_from_the_command_line(conn: psycopg.Connection, database_url: str, capsys):
    _aged_ledger(conn)
    env = {"DATABASE_URL": database_url, "REDIS_URL": "redis://127.0.0.1:6379/0"}

    assert ledger_main(["retention", "--days", "6", "--dry-run"], env) == 0
    out = capsys.readouterr()
    assert "would drop 3 partition(s)" in out.err and name(today() - timedelta(days=8)) in out.out
    assert name(today() - timedelta(days=8)) in partitions(conn)

    assert ledger_main(["retention", "--days", "6", "--json"], env) == 0
    import orjson

    dropped = orjson.loads(capsys.readouterr().out)
    assert sorted(d["partition"] for d in dropped) == sorted(
        [name(today() - timedelta(days=10)), name(today() - timedelta(days=8)), "refresh_ledger_default"]
    )
    assert name(today() - timedelta(days=5)) in partitions(conn)

    assert ledger_main(["retention", "--days", "0"], env) == 1
    assert "at least 1 day" in capsys.readouterr().err

    assert ledger_main(["partitions", "--ensure"], env) == 0
    out = capsys.readouterr()
    assert "made 0 partition(s)" in out.err and name(today()) in out.out


def test_the_worker_retention_helper_drops_and_never_raises(conn: psycopg.Connection, database_url: str):
    _aged_ledger(conn)

    async def go(url: str, days: int) -> list[dict[str, Any]] | None:
        db = await Database.open(url, connect_timeout=1)
        try:
            return await apply_retention(db, days)
        finally:
            await db.close()

    dropped = asyncio.run(go(database_url, 9))
    assert [d["partition"] for d in dropped or []] == [
        name(today() - timedelta(days=10)),
        "refresh_ledger_default",
    ]
    assert asyncio.run(go(database_url, 0)) is None  # refused by Postgres: logged, not raised


def test_a_drain_applies_the_retention_setting(conn: psycopg.Connection, worker_env, redis_client):
    from coclib.queue import RefreshRequest
    from coclib.settings import Settings
    from tests.helpers import drain, push

    placed = _aged_ledger(conn)
    settings = Settings.from_env({**worker_env, "LEDGER_RETENTION_DAYS": "7"})
    push(redis_client, settings, RefreshRequest("fresh", "player", "#2PP"))

    drain(settings)

    old = {name(today() - timedelta(days=10)), name(today() - timedelta(days=8))}
    assert not old & set(partitions(conn))
    assert set(placed) - old - {"refresh_ledger_default"} <= set(partitions(conn))
    fresh = "SELECT outcome FROM refresh_ledger WHERE request_id = 'fresh' ORDER BY id"
    assert conn.execute(fresh).fetchall() == [
        {"outcome": "attempted"},
        {"outcome": "fetched"},
    ]
