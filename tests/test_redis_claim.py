"""Test sessions on one machine never share a Redis db (tests/conftest.py, `redis_base_url`).

Every test flushes its session's db; two sessions on one db empty each other's queues in the
middle of a test, which shows only as a test that fails now and then, far from the cause. So a
session claims its db, also the one `TEST_REDIS_URL` names, and a second session given that db
stops at once saying so. A claim whose session died is taken over.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from coclib.testing.services import with_redis_db
from tests.conftest import _CLAIM, _CLAIM_KEY, ROOT

# One quick test that flushes the db (through `redis_client`).
A_REDIS_TEST = "tests/test_queue.py::test_enqueue_refuses_bad_input_at_once"


def _session(redis_url: str) -> subprocess.CompletedProcess[str]:
    """A second pytest session on this machine, given `redis_url` as its TEST_REDIS_URL."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", A_REDIS_TEST],
        cwd=ROOT,
        env={**os.environ, "TEST_REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_session_given_the_db_of_a_live_session_stops_and_says_why(redis_base_url):
    with redis.Redis.from_url(redis_base_url) as client:
        client.set("coc-tests:canary", "still here")
        proc = _session(redis_base_url)
        assert proc.returncode != 0
        assert f"is the Redis db of another test session (pid {os.getpid()})" in proc.stdout, proc.stdout
        # Nothing of ours was flushed, and the claim is still ours.
        assert client.get("coc-tests:canary") == b"still here"
        assert client.get(_CLAIM_KEY) == _CLAIM.encode()


def test_a_claim_left_by_a_dead_session_is_taken_over_and_given_back(redis_base_url):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_claim = f"{gone.stdout.strip()}:a-session-that-was-killed"
    for db in range(13, 0, -1):  # a db nobody uses, claimed as a killed session would leave it
        url = with_redis_db(redis_base_url, db)
        with redis.Redis.from_url(url) as client:
            if client.set(_CLAIM_KEY, dead_claim, nx=True, ex=600):
                break
    else:
        pytest.fail("every Redis db from 1 to 13 is claimed: no db to leave a dead session's claim in")
    proc = _session(url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with redis.Redis.from_url(url) as client:
        assert client.get(_CLAIM_KEY) is None  # the session gave it back when it ended


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://127.0.0.1:6379/0", {"host": "127.0.0.1", "port": 6379}),
        ("rediss://:secret@cache.example:6380", {"host": "cache.example", "password": "secret"}),
        # The embedded server's URL (a unix socket): what a machine without Redis uses.
        ("unix:///tmp/state/redis.socket", {"path": "/tmp/state/redis.socket"}),
        ("unix:///tmp/state/redis.socket?password=secret&db=2", {"path": "/tmp/state/redis.socket"}),
    ],
)
def test_a_url_moved_to_another_db_is_read_by_redis_py_as_the_same_server(url, where):
    options = redis.connection.parse_url(with_redis_db(url, 13))
    assert options["db"] == 13
    assert {key: options.get(key) for key in where} == where
    assert options.get("password") == redis.connection.parse_url(url).get("password")
