"""Health: the rules (unit), then GET /health through `lambda_handler` in each situation.

Unhealthy situations use real network faults on 127.0.0.1: a port that refuses, a server that
accepts and never answers, and a proxy that goes silent after the worker connected through it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from coclib.keys import QueueKeys
from coclib.queue import RefreshRequest
from coclib.testing.lambda_context import rest_event, scheduled_event
from ledger.health import DEGRADED, HEALTHY, UNHEALTHY, HealthRules, QueueState, assess
from tests.helpers import push, query
from tests.test_handler import body, cold_invoker, redis_state
from worker.health import PROBE_BUDGET_SECONDS

NOW = 1_800_000_000.0


@pytest.fixture
def invoke(monkeypatch, worker_env):
    yield from cold_invoker(monkeypatch, worker_env)


# -- the rules --------------------------------------------------------------------------------


def stats(**overrides):
    base = {
        "window_seconds": 3600, "attempted": 0, "fetched": 0, "failed": 0, "skipped_deadline": 0,
        "deferred": 0, "failure_rate": None, "p95_latency_ms": None, "last_fetched_at": None,
        "orphaned_attempts": 0, "last_run_id": None, "last_run_finished_at": None,
        "last_run_stopped": None, "last_run_cause": None,
    }  # fmt: skip
    return {**base, **overrides}


def queue(size=0, oldest=None, inflight=0):
    return QueueState(
        queue_size=size, inflight_size=inflight, oldest_queued_age_seconds=oldest, draining=False
    )


def iso(seconds_ago: float) -> str:
    return datetime.fromtimestamp(NOW - seconds_ago, UTC).isoformat()


def test_rules_healthy_when_nothing_is_wrong():
    assert assess(stats(), queue(), now=NOW) == (HEALTHY, [])
    assert assess(stats(fetched=100, failed=5, last_fetched_at=iso(30)), queue(3, 30), now=NOW)[0] == HEALTHY


def test_rules_unhealthy_when_a_dependency_cannot_be_read():
    assert assess(None, queue(), now=NOW, problems=["postgres: refused"]) == (
        UNHEALTHY,
        ["postgres: refused"],
    )
    assert assess(stats(), None, now=NOW, problems=["redis: no answer"])[0] == UNHEALTHY


@pytest.mark.parametrize(
    ("fetched", "failed", "status"),
    [
        (8, 2, HEALTHY),
        (7, 3, DEGRADED),
        (1, 2, HEALTHY),
        (0, 10, DEGRADED),
        (80, 20, HEALTHY),
        (79, 21, DEGRADED),
    ],
)
def test_rules_failure_rate_above_threshold_with_enough_settled(fetched, failed, status):
    got, reasons = assess(stats(fetched=fetched, failed=failed, last_fetched_at=iso(1)), queue(), now=NOW)
    assert got == status
    assert all("failure rate" in r for r in reasons)


@pytest.mark.parametrize(
    ("queued", "last_fetch_ago", "oldest", "status"),
    [
        (5, 601, 700, DEGRADED),  # nothing fetched for 10 minutes, a request waited as long
        (5, None, 700, DEGRADED),  # never fetched anything
        (5, 601, None, DEGRADED),  # the head has no enqueued_at: trust the fetch time alone
        (5, 599, 700, HEALTHY),  # fetched recently
        (5, 3600, 30, HEALTHY),  # idle for an hour, the queue only just got a request
        (0, 3600, None, HEALTHY),  # idle and nothing to do
    ],
)
def test_rules_stalled_when_the_queue_waits_and_nothing_is_fetched(queued, last_fetch_ago, oldest, status):
    last = iso(last_fetch_ago) if last_fetch_ago is not None else None
    got, reasons = assess(stats(last_fetched_at=last), queue(queued, oldest), now=NOW)
    assert got == status
    assert all("stalled" in r for r in reasons)


def test_rules_orphaned_attempts_and_an_open_circuit_degrade():
    got, reasons = assess(stats(orphaned_attempts=2), queue(), now=NOW)
    assert got == DEGRADED and "2 orphaned attempts" in reasons[0]
    got, reasons = assess(
        stats(last_run_stopped="circuit_open", last_run_cause="maintenance: …"), queue(), now=NOW
    )
    assert got == DEGRADED and "opened the circuit (maintenance" in reasons[0]


def test_rules_thresholds_are_settings_of_their_own():
    rules = HealthRules(max_failure_rate=0.5, min_settled=2, stall_after_seconds=60, max_orphaned_attempts=3)
    assert (
        assess(stats(fetched=1, failed=1, orphaned_attempts=3), queue(), now=NOW, rules=rules)[0] == HEALTHY
    )
    assert assess(stats(fetched=1, failed=2), queue(), now=NOW, rules=rules)[0] == DEGRADED
    assert assess(stats(last_fetched_at=iso(61)), queue(1, 61), now=NOW, rules=rules)[0] == DEGRADED


def test_rules_ignore_columns_the_view_does_not_have():
    assert assess({"window_seconds": 3600}, queue(5, 9999), now=NOW) == (HEALTHY, [])


# -- network faults ------------------------------------------------------------------------------


class BlackHole:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


class FreezableProxy:
    """Forwards TCP to a target; frozen, it holds every byte and every new connection.

    Models a network partition after the worker connected: sockets stay open, nothing
    arrives. Unfreezing delivers what was held, so the worker can recover. The target is a
    (host, port) or the path of a Unix socket (embedded Postgres and Redis listen on one).
    """

    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.running = threading.Event()
        self.running.set()
        self.closed = False
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.running.clear()

    def thaw(self) -> None:
        self.running.set()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.sock.accept()
                threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self.running.wait()
        if isinstance(self.target, str):
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.target)
        else:
            upstream = socket.create_connection(self.target)
        self.sockets += [client, upstream]
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self.running.wait()
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.thaw()
        self.sock.close()
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()


def refused_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_at(database_url: str, port: int) -> str:
    """The same database and user, at 127.0.0.1:`port` (wherever the real server listens)."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    info.update(host="127.0.0.1", port=port)
    return psycopg.conninfo.make_conninfo(**info)


def pg_endpoint(database_url: str) -> tuple[str, int] | str:
    """Where the server really listens: (host, port), or a Unix socket's path."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    host, port = info.get("host") or "127.0.0.1", int(info.get("port") or 5432)
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def redis_db(redis_url: str) -> int:
    parts = urlsplit(redis_url)
    if parts.scheme == "unix":
        return int(parse_qs(parts.query).get("db", ["0"])[0])
    return int(parts.path.strip("/") or 0)


def redis_at(redis_url: str, port: int) -> str:
    """The same Redis db, at 127.0.0.1:`port` (also for a server on a Unix socket)."""
    return f"redis://127.0.0.1:{port}/{redis_db(redis_url)}"


def redis_endpoint(redis_url: str) -> tuple[str, int] | str:
    parts = urlsplit(redis_url)
    return parts.path if parts.scheme == "unix" else (parts.hostname or "127.0.0.1", parts.port or 6379)


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def get_health(invoke):
    return invoke(rest_event("GET", "/health"))


def req(i, tag="#2PP", enqueued_at=None):
    return RefreshRequest(str(i), "player", tag, enqueued_at or time.time())


# -- healthy and degraded, through the handler ---------------------------------------------------------


def test_healthy_on_an_empty_ledger_and_queue(invoke):
    response = get_health(invoke)

    assert response["statusCode"] == 200
    assert body(response)["status"] == "healthy"
    assert body(response)["oldest_queued_age_seconds"] is None


def test_degraded_when_the_failure_rate_is_high_and_healthy_again_when_it_falls(
    invoke, settings, redis_client, simulator
):
    tags = ["#2PP", "#2PQ", "#2PR", "#2PU", "#2PV", "#2PY", "#2PL", "#2PG", "#2PJ", "#2PC"]
    simulator.not_found.update(tags[:4])
    push(redis_client, settings, *[req(i, tag=t) for i, t in enumerate(tags)])
    invoke(scheduled_event())

    degraded = body(invoke(rest_event("GET", "/health")))
    assert degraded["status"] == "degraded"
    assert degraded["ledger"]["failed"] == 4 and degraded["ledger"]["fetched"] == 6
    assert any("failure rate 0.40" in r for r in degraded["reasons"])

    push(redis_client, settings, *[req(f"more-{i}", tag=t) for i, t in enumerate(tags[4:] * 2)])
    invoke(scheduled_event())
    assert body(invoke(rest_event("GET", "/health")))["status"] == "healthy"  # 4 of 22 failed


def test_degraded_when_nothing_is_fetched_for_ten_minutes_while_requests_wait(
    invoke, settings, redis_client, database_url
):
    long_ago = datetime.now(UTC) - timedelta(minutes=20)
    run = uuid.uuid4()
    query(
        database_url,
        "INSERT INTO refresh_ledger (request_id, run_id, kind, tag, outcome, occurred_at) VALUES "
        "('old', %s, 'player', '#2PP', 'attempted', %s), ('old', %s, 'player', '#2PP', 'fetched', %s) "
        "RETURNING id",
        run, long_ago, run, long_ago,
    )  # fmt: skip
    push(redis_client, settings, req("fresh", enqueued_at=time.time() - 5))
    assert body(invoke(rest_event("GET", "/health")))["status"] == "healthy"  # it only just arrived

    redis_client.delete(QueueKeys(settings.queue.refresh_queue_key).queue)
    enqueued_at = time.time() - 15 * 60
    push(redis_client, settings, req("waiting", enqueued_at=enqueued_at))
    before = time.time()
    health = body(invoke(rest_event("GET", "/health")))
    after = time.time()

    assert health["status"] == "degraded"
    assert [r for r in health["reasons"] if r.startswith("stalled: nothing fetched for")]
    assert before - enqueued_at - 0.001 <= health["oldest_queued_age_seconds"] <= after - enqueued_at + 0.001


def test_degraded_when_there_are_orphaned_attempts(invoke, database_url):
    # A run that died between the API call and the commit: an attempt, nothing after it.
    query(database_url, "INSERT INTO refresh_ledger (request_id, run_id, kind, tag, outcome, occurred_at) "
          "VALUES ('orphan', %s, 'player', '#2PP', 'attempted', now() - interval '15 minutes') RETURNING id",
          uuid.uuid4())  # fmt: skip

    health = body(invoke(rest_event("GET", "/health")))

    assert health["status"] == "degraded"
    assert health["ledger"]["orphaned_attempts"] == 1
    assert any("orphaned" in r for r in health["reasons"])


def test_degraded_when_the_last_run_opened_the_circuit_then_healthy_after_a_good_run(
    invoke, settings, redis_client, simulator
):
    push(redis_client, settings, req(1))
    simulator.maintenance = True
    invoke(scheduled_event())

    health = body(invoke(rest_event("GET", "/health")))
    assert health["status"] == "degraded"
    assert health["ledger"]["last_run_stopped"] == "circuit_open"
    assert any("opened the circuit (maintenance" in r for r in health["reasons"])

    simulator.maintenance = False
    invoke(scheduled_event())
    assert body(invoke(rest_event("GET", "/health")))["status"] == "healthy"


# -- unhealthy, naming the check that failed or ran out of time ---------------------------------------
# Health bounds each probe (PROBE_BUDGET_SECONDS) rather than the test timing it: a hung
# dependency shows as that check's own timeout, which a slow machine cannot fake or hide.

TIMED_OUT = f"no answer within {PROBE_BUDGET_SECONDS:g} s"
POOL_TIMED_OUT = "PoolTimeout: couldn't get a connection after"


def assert_unhealthy(response, failing: str, words: str) -> dict:
    health = body(response)
    assert response["statusCode"] == 503, health
    assert health["status"] == "unhealthy"
    assert not health["checks"][failing]["ok"]
    assert words in health["checks"][failing]["error"]
    assert any(r.startswith(f"{failing}: ") for r in health["reasons"])
    return health


def test_unhealthy_when_postgres_refuses(invoke, worker_env, database_url):
    invoke.env(worker_env, DATABASE_URL=pg_at(database_url, refused_port()))

    response = get_health(invoke)

    health = assert_unhealthy(response, "postgres", "database_unavailable: ")
    assert health["ledger"] is None
    assert health["checks"]["redis"]["ok"] and health["queue_size"] == 0  # Redis still reported


def test_unhealthy_when_postgres_accepts_and_never_answers(invoke, worker_env, database_url, black_hole):
    invoke.env(worker_env, DATABASE_URL=pg_at(database_url, black_hole.port))

    for _ in range(2):  # cold, then warm with the pool still waiting
        assert_unhealthy(get_health(invoke), "postgres", POOL_TIMED_OUT)


def test_unhealthy_when_redis_refuses(invoke, worker_env, redis_url):
    invoke.env(worker_env, REDIS_URL=redis_at(redis_url, refused_port()))

    response = get_health(invoke)

    health = assert_unhealthy(response, "redis", "ConnectionError: ")
    assert health["queue_size"] is None
    assert health["checks"]["postgres"]["ok"] and health["ledger"] is not None


def test_unhealthy_when_redis_accepts_and_never_answers(invoke, worker_env, redis_url, black_hole):
    invoke.env(worker_env, REDIS_URL=redis_at(redis_url, black_hole.port))

    for _ in range(2):
        assert_unhealthy(get_health(invoke), "redis", TIMED_OUT)


@pytest.mark.parametrize("failing", ["postgres", "redis"])
def test_unhealthy_naming_the_check_when_a_warm_connection_goes_silent_then_recovers(
    failing, invoke, worker_env, database_url, redis_url
):
    if failing == "postgres":
        proxy = FreezableProxy(pg_endpoint(database_url))
        invoke.env(worker_env, DATABASE_URL=pg_at(database_url, proxy.port))
    else:
        proxy = FreezableProxy(redis_endpoint(redis_url))
        invoke.env(worker_env, REDIS_URL=redis_at(redis_url, proxy.port))
    try:
        assert invoke(rest_event("GET", "/health"))["statusCode"] == 200  # warm: connected
        proxy.freeze()

        for _ in range(2):
            assert_unhealthy(get_health(invoke), failing, TIMED_OUT)

        proxy.thaw()
        deadline = time.monotonic() + 60  # a bound on a health that never recovers, not a timing
        while invoke(rest_event("GET", "/health"))["statusCode"] != 200:
            assert time.monotonic() < deadline, "health did not recover after the network came back"
            time.sleep(0.2)
    finally:
        proxy.close()


def test_unhealthy_when_the_ledger_view_is_missing(invoke, worker_env, empty_database_url):
    invoke.env(worker_env, DATABASE_URL=empty_database_url)  # migrations never applied

    assert_unhealthy(get_health(invoke), "postgres", 'relation "refresh_health" does not exist')


# -- health reads, never writes ------------------------------------------------------------------------


def test_health_takes_no_lease_and_leaves_redis_exactly_as_it_was(
    invoke, settings, redis_client, monkeypatch
):
    keys = QueueKeys(settings.queue.refresh_queue_key)
    enqueued_at = time.time() - 90
    push(redis_client, settings, req(1, enqueued_at=enqueued_at), req(2, tag="#2PQ"), b"not json")
    redis_client.rpush(keys.inflight, b'{"id": "x", "kind": "player", "tag": "#2PP"}')
    redis_client.set(keys.pending("player", "#2PP"), b"1", ex=3600)
    redis_client.rpush(keys.priority, b'{"id": "y", "kind": "clan", "tag": "#2PP"}')
    before = redis_state(redis_client)

    written = []
    from redis.asyncio.client import Pipeline, Redis

    def spy(original):
        def wrapper(self, *args, **kwargs):
            written.append(args[0] if args else kwargs)
            return original(self, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(Redis, "execute_command", spy(Redis.execute_command))
    monkeypatch.setattr(Pipeline, "pipeline_execute_command", spy(Pipeline.pipeline_execute_command))

    for _ in range(3):
        asked = time.time()
        health = body(invoke(rest_event("GET", "/health")))
        answered = time.time()

    assert redis_state(redis_client) == before
    assert redis_client.get(keys.lease) is None
    assert health["queue_size"] == 3 and health["inflight_size"] == 1
    assert health["priority_queue_size"] == 1
    age = health["oldest_queued_age_seconds"]
    assert asked - enqueued_at - 0.001 <= age <= answered - enqueued_at + 0.001
    commands = {str(c).upper() for c in written if isinstance(c, str)}
    # INFO (and CLUSTER INFO where INFO is silent) tells a cluster from a single node, once.
    reads = {"LLEN", "LINDEX", "EXISTS", "PING", "INFO", "CLUSTER INFO"}
    assert commands <= reads | {"CLIENT SETINFO", "HELLO", "SELECT", "CLIENT"}, commands


def test_health_during_a_drain_reports_it_and_leaves_the_lease_alone(invoke, settings, redis_client):
    keys = QueueKeys(settings.queue.refresh_queue_key)
    redis_client.set(keys.lease, b"a-running-drain", px=30_000)

    health = body(invoke(rest_event("GET", "/health")))

    assert health["draining"] is True and health["status"] == "healthy"
    assert redis_client.get(keys.lease) == b"a-running-drain"
