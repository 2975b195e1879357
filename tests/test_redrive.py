"""`python -m ledger redrive`: failed requests and dead letters back to the queue, on request."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest

from coclib.db import Database
from coclib.keys import QueueKeys
from coclib.queue import enqueue, parse_item
from coclib.reasons import Reason
from ledger.__main__ import main
from ledger.outcomes import LedgerRow, Outcome
from ledger.writer import LedgerWriter
from tests.helpers import drain, query, queue_items


def _rows(database_url: str, rows: list[LedgerRow]) -> None:
    async def go():
        db = await Database.open(database_url)
        try:
            await LedgerWriter(db, uuid.uuid4()).append(rows)
        finally:
            await db.close()

    asyncio.run(go())


def failed(request_id: str, kind: str | None, tag: str | None, reason: Reason) -> LedgerRow:
    return LedgerRow(request_id, Outcome.FAILED, kind, tag, reason, "detail")


@pytest.fixture
def history(database_url):
    """A ledger with failures of several reasons and kinds; one tag fetched after it failed."""
    _rows(
        database_url,
        [
            failed("old-2pq", "player", "#2PQ", Reason.UPSTREAM_ERROR),
            failed("clan-8qu", "clan", "#8QU", Reason.TIMEOUT),
            failed("gone", "player", "#YYYY", Reason.NOT_FOUND),
            failed("junk", None, None, Reason.INVALID_REQUEST),
            failed("since-fetched", "player", "#2PP", Reason.UPSTREAM_ERROR),
        ],
    )
    _rows(
        database_url,
        [
            failed("new-2pq", "player", "#2PQ", Reason.UPSTREAM_ERROR),  # the newest for its tag
            LedgerRow("fresh", Outcome.FETCHED, "player", "#2PP"),
        ],
    )
    return database_url


def run(capsys, env, *argv: str) -> tuple[int, list[dict], str]:
    code = main(["redrive", *argv, "--json"], env)
    out, err = capsys.readouterr()
    return code, (orjson.loads(out) if out.strip() else []), err


@pytest.fixture
def env(database_url, redis_url):
    return {"DATABASE_URL": database_url, "REDIS_URL": redis_url}


def test_dry_run_lists_the_newest_failure_of_each_tag_and_changes_nothing(
    history, env, settings, redis_client, capsys
):
    code, rows, err = run(capsys, env)
    assert code == 0, err
    # Not: the older failure of #2PQ, the malformed request, #2PP (fetched since it failed).
    assert sorted((r["request_id"], r["reason"]) for r in rows) == [
        ("clan-8qu", "timeout"),
        ("gone", "not_found"),
        ("new-2pq", "upstream_error"),
    ]
    assert all(r["result"] is None for r in rows)
    assert "would re-queue 3 request(s)" in err
    assert queue_items(redis_client, settings) == []
    assert query(history, "SELECT count(*) AS n FROM refresh_redrives")[0]["n"] == 0


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--reason", "upstream_error"], ["new-2pq"]),
        (["--reason", "upstream_error", "--reason", "timeout"], ["clan-8qu", "new-2pq"]),
        (["--kind", "clan"], ["clan-8qu"]),
        (["--until", "1h"], []),
        (["--since", "2000-01-01 00:00+00", "--kind", "player", "--reason", "not_found"], ["gone"]),
    ],
)
def test_selection_by_reason_kind_and_window(history, env, capsys, argv, expected):
    code, rows, err = run(capsys, env, *argv)
    assert code == 0, err
    assert sorted(r["request_id"] for r in rows) == expected


def test_apply_queues_new_requests_records_them_and_never_twice(history, env, settings, redis_client, capsys):
    keys = QueueKeys(settings.queue.refresh_queue_key)
    waiting = enqueue(redis_client, "clan", "#8QU", keys=keys)  # a producer got there first
    code, rows, err = run(capsys, env, "--reason", "upstream_error", "--reason", "timeout", "--apply")
    assert code == 0, err
    by_id = {r["request_id"]: r for r in rows}
    assert by_id["clan-8qu"]["result"] == "already_queued" and by_id["clan-8qu"]["new_request_id"] is None
    assert by_id["new-2pq"]["result"] == "queued"
    queued = [parse_item(raw).request for raw in queue_items(redis_client, settings)]
    assert [(q.id, q.kind, q.tag) for q in queued] == [
        (waiting, "clan", "#8QU"),
        (by_id["new-2pq"]["new_request_id"], "player", "#2PQ"),
    ]
    record = query(history, "SELECT * FROM refresh_redrives ORDER BY request_id")
    assert [(r["request_id"], r["result"], r["new_request_id"], r["reason"]) for r in record] == [
        ("clan-8qu", "already_queued", None, "timeout"),
        ("new-2pq", "queued", by_id["new-2pq"]["new_request_id"], "upstream_error"),
    ]
    assert record[0]["selection"]["reasons"] == ["upstream_error", "timeout"]

    # Redriven once is enough: while the new request waits, and after it has settled.
    for _ in range(2):
        again, rows, err = run(capsys, env, "--reason", "upstream_error", "--reason", "timeout", "--apply")
        assert (again, rows) == (0, [])
        drain(settings)
    assert query(history, "SELECT count(*) AS n FROM refresh_redrives")[0]["n"] == 2

    # The audit follows the re-queued request to its outcome.
    assert main(["audit", "redrives", "--json"], env) == 0
    audit = orjson.loads(capsys.readouterr().out)
    assert {(a["request_id"], a["latest_outcome"]) for a in audit} == {
        ("clan-8qu", None),
        ("new-2pq", "fetched"),
    }


def test_dead_letters_go_back_to_the_tail_as_they_were(env, settings, redis_client, database_url, capsys):
    keys = QueueKeys(settings.queue.refresh_queue_key)
    waiting = enqueue(redis_client, "player", "#2PP", keys=keys)
    dead = [
        b'{"id": "d1", "kind": "clan", "tag": "#8QU"}',
        b'{"id": "d2", "kind": "player", "tag": "#2PP"}',  # the same kind and tag is waiting
        b"\x00 not json",
    ]
    redis_client.rpush(keys.dead_letter, *dead)

    code, rows, err = run(capsys, env, "--from", "dead-letter")
    assert code == 0 and [r["request_id"] for r in rows] == ["d1", "d2", parse_item(dead[2]).request_id]
    assert redis_client.lrange(keys.dead_letter, 0, -1) == dead  # a dry run moves nothing

    code, rows, err = run(capsys, env, "--from", "dead-letter", "--apply")
    assert code == 0, err
    assert [r["result"] for r in rows] == ["queued", "already_queued", "queued"]
    assert redis_client.lrange(keys.dead_letter, 0, -1) == []
    assert queue_items(redis_client, settings)[1:] == [dead[0], dead[2]]
    assert parse_item(queue_items(redis_client, settings)[0]).request_id == waiting
    record = query(database_url, "SELECT source, request_id, payload FROM refresh_redrives ORDER BY id")
    assert [r["source"] for r in record] == ["dead_letter"] * 3
    assert record[2]["payload"] == "\\x00 not json"


def test_redrive_reads_redis_settings_and_refuses_a_reference(database_url, capsys):
    assert main(["redrive"], {"DATABASE_URL": database_url}) == 2
    assert "REDIS_URL" in capsys.readouterr().err
    ref = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:coc/redis-url-AbCdEf"
    assert main(["redrive"], {"DATABASE_URL": database_url, "REDIS_URL_SECRET_ARN": ref}) == 2
    assert "only the Lambda handler reads secrets by reference" in capsys.readouterr().err


def test_a_dead_letter_key_that_is_no_list_is_one_line(env, settings, redis_client, capsys):
    redis_client.set(QueueKeys(settings.queue.refresh_queue_key).dead_letter, "not a list")
    assert main(["redrive", "--from", "dead-letter", "--apply"], env) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: Redis: ") and "WRONGTYPE" in line
