"""Shared fixtures: real Postgres and Redis (found or started), and the API simulator.

Postgres: one template database migrated once per session; each test gets a fresh
copy (CREATE DATABASE … TEMPLATE is cheap). Redis: one logical db, flushed before
each test; the cluster, TLS-only and Valkey servers come from `tests.redis_servers`.
The simulator runs in a background thread for the whole session and has its faults
reset before each test.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from coclib.migrations import migrate
from coclib.settings import Settings, mask_url_password
from coclib.testing.services import (
    REDIS_CLAIM_KEY,
    claim_free_redis_db,
    claim_redis_db,
    create_database,
    drop_database,
    find_postgres,
    find_redis,
)
from coclib.testing.simulator import CocApiSimulator, SimulatorThread
from tests.redis_servers import (  # noqa: F401 (fixtures: a Redis Cluster, TLS-only Redis, Valkey)
    redis_cluster,
    tls_material,
    tls_redis,
    valkey_cluster,
    valkey_server,
)

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = ROOT / ".cache" / "test-services"
TEST_TOKEN = "test-token"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    return find_postgres(STATE_DIR)


@pytest.fixture(scope="session")
def template_database(pg_admin_url: str) -> Iterator[str]:
    name = f"coc_test_template_{os.getpid()}"
    url = create_database(pg_admin_url, name)
    migrate(url)
    yield name
    drop_database(pg_admin_url, name)


@pytest.fixture
def database_url(pg_admin_url: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated database for this test alone."""
    name = f"coc_test_{os.getpid()}_{next(_counter)}"
    url = create_database(pg_admin_url, name, template=template_database)
    yield url
    drop_database(pg_admin_url, name)


@pytest.fixture
def empty_database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with no migrations applied."""
    name = f"coc_test_empty_{os.getpid()}_{next(_counter)}"
    url = create_database(pg_admin_url, name)
    yield url
    drop_database(pg_admin_url, name)


# This session's claim on its Redis db (`coclib.testing.services.claim_redis_db`).
_CLAIM_KEY = REDIS_CLAIM_KEY
_CLAIM_SECONDS = 1800  # renewed by every flush, so it outlives only a dead session
_CLAIM = f"{os.getpid()}:{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    """This session's Redis db, claimed: two sessions flushing one db would empty each other's
    queues mid-test, which shows only as a test that fails now and then."""
    url = find_redis(STATE_DIR)
    if os.environ.get("TEST_REDIS_URL"):
        held = claim_redis_db(url, _CLAIM, _CLAIM_SECONDS)
        if held is not None:
            pid = held.split(b":", 1)[0].decode(errors="replace")
            pytest.fail(
                f"TEST_REDIS_URL ({mask_url_password(url)}) is the Redis db of another test session (pid "
                f"{pid}) on this machine: give each session a db of its own, or unset "
                "TEST_REDIS_URL to have a free one found",
                pytrace=False,
            )
        candidate = url
    else:
        # A found or embedded server: keep to a db of our own, never the default 0.
        candidate = claim_free_redis_db(url, _CLAIM, _CLAIM_SECONDS, range(13, 0, -1))
        if candidate is None:
            pytest.fail(
                f"every Redis db from 1 to 13 at {mask_url_password(url)} is claimed by another test session",
                pytrace=False,
            )
    yield candidate
    with redis.Redis.from_url(candidate) as client:
        if client.get(_CLAIM_KEY) == _CLAIM.encode():
            client.delete(_CLAIM_KEY)


def flush_redis_db(client: redis.Redis) -> None:
    """Empty the session's Redis db, keeping the session's claim on it.

    One MULTI: another session looking for a free db never sees this one unclaimed. A bare
    FLUSHDB would drop the claim, and a session starting meanwhile would share the db: its
    requests in our queue, ours drained by its workers.
    """
    with client.pipeline(transaction=True) as tx:
        tx.flushdb()
        tx.set(_CLAIM_KEY, _CLAIM, ex=_CLAIM_SECONDS)
        tx.execute()


@pytest.fixture
def redis_url(redis_base_url: str) -> str:
    """A Redis db, flushed for this test (the session's claim on it kept)."""
    with redis.Redis.from_url(redis_base_url) as client:
        flush_redis_db(client)
    return redis_base_url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def _simulator_thread() -> Iterator[CocApiSimulator]:
    with SimulatorThread(CocApiSimulator(tokens=(TEST_TOKEN,))) as sim:
        yield sim


@pytest.fixture
def simulator(_simulator_thread: CocApiSimulator) -> CocApiSimulator:
    """The running simulator, with no faults, no latency and an empty call log."""
    sim = _simulator_thread
    sim.reset_faults()
    sim.latency = (0.0, 0.0)
    sim.rate_limit = None
    sim.player_bytes = 0
    # Tests may revoke tokens; give back ours and the keys the portal created.
    sim.tokens.clear()
    sim.tokens.update({TEST_TOKEN, *(key["key"] for key in sim.portal_keys)})
    sim.clear_calls()
    return sim


@pytest.fixture
def worker_env(database_url: str, redis_url: str, simulator: CocApiSimulator) -> dict[str, str]:
    """Environment variables for a worker wired to this test's services."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "COC_API_BASE_URL": simulator.base_url,
        "COC_API_TOKENS": TEST_TOKEN,
        "COC_REQS_PER_SEC": "30",
        "LOG_LEVEL": "INFO",
        # Scheduled runs return when the lanes are empty; tests of linger ask for it.
        "DRAIN_LINGER_SECONDS": "0",
    }


@pytest.fixture
def settings(worker_env: dict[str, str]) -> Settings:
    return Settings.from_env(worker_env)
