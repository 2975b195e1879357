"""Redis Cluster specifics, on the session's real 3-master cluster (`tests.redis_servers`).

Slots: every derived key of any queue key hashes, by the cluster's own `CLUSTER KEYSLOT`, to
the queue key's slot. Detection: a cluster is recognised from any node, the `REDIS_CLUSTER`
override wins, `INFO` refused falls back to `CLUSTER INFO`, and a `/N` database is refused.
Failure: the node owning the queue's slot is killed mid-run and restarted; the run halts,
nothing is lost, and the next run recovers and settles everything exactly once.
"""

from __future__ import annotations

import asyncio
import threading
import uuid

import orjson
import pytest
import redis

from coclib.errors import ConfigError
from coclib.keys import QueueKeys, key_slot
from coclib.queue import RefreshRequest, encode, enqueue
from coclib.redis_client import ClusterUnavailable, async_client, is_cluster, sync_client
from coclib.settings import Settings
from tests.helpers import drain, query
from tests.redis_servers import APP_USER, CLUSTER_PASSWORD, wait_for
from tests.test_redis_deployments import TAGS, run_worker, settling

QUEUE_KEYS = [
    "refresh_queue",  # no tag: the key is the tag
    "{coc:refresh}:queue",  # the default: a tag lent to the derived keys
    "site-a:refresh:queue",
    "{}refresh",  # empty braces are no tag
    "a}b",  # no tag, and a '}' that braces cannot wrap
    "x{y",
    "q{}{tag}",  # the first '{' decides: no tag
    "ключ:очередь",
]


def base_env(redis_url: str, queue_key: str, **more: str) -> dict[str, str]:
    unused_db = "postgresql://unused@127.0.0.1/unused"  # these tests touch only Redis
    return {"DATABASE_URL": unused_db, "REDIS_URL": redis_url, "REFRESH_QUEUE_KEY": queue_key, **more}


def assert_moved(exc: BaseException) -> None:
    # redis-py 6+ raises MovedError; 5.x a ResponseError reading "MOVED <slot> <node>".
    assert isinstance(exc, redis.exceptions.MovedError) or str(exc).startswith("MOVED"), repr(exc)


@pytest.fixture
def queue_key(redis_cluster) -> str:
    key = f"refresh_queue_{uuid.uuid4().hex[:10]}"
    yield key
    with redis_cluster.client() as client:
        client.delete(*QueueKeys(key).derived_keys().values())


# -- slots ------------------------------------------------------------------------------------


@pytest.mark.parametrize("queue", QUEUE_KEYS)
def test_every_derived_key_is_in_the_queue_keys_slot(redis_cluster, queue):
    keys = QueueKeys(queue)
    family = {**keys.derived_keys(), "pending": keys.pending("player", "#2PP")}

    slots = {name: redis_cluster.slot(key) for name, key in family.items()}

    assert set(slots.values()) == {redis_cluster.slot(queue)}, slots
    assert key_slot(queue) == redis_cluster.slot(queue)  # our CRC16 agrees with the server's
    assert keys.queue == queue  # the producer's key is used as it is


def test_a_key_without_a_tag_becomes_the_tag():
    keys = QueueKeys("refresh_queue")
    assert (keys.inflight, keys.lease) == ("{refresh_queue}:inflight", "{refresh_queue}:lease")
    assert QueueKeys("{coc:refresh}:queue").inflight == "{coc:refresh}:queue:inflight"  # unchanged


def test_a_new_derived_key_inherits_the_slot_rule(redis_cluster):
    class WithAuditLog(QueueKeys):
        @property
        def audit_log(self) -> str:
            return self.derived("audit")

    keys = WithAuditLog("a}b")
    assert "audit_log" in keys.derived_keys()
    assert redis_cluster.slot(keys.audit_log) == redis_cluster.slot("a}b")


# -- detection and the cluster client ---------------------------------------------------------


def test_a_plain_client_gets_moved_where_ours_follows(redis_cluster, queue_key):
    elsewhere = redis_cluster.not_owner(queue_key)
    keys = QueueKeys(queue_key)
    with pytest.raises(redis.exceptions.ResponseError) as refused, elsewhere.client() as plain:
        enqueue(plain, "player", "#2PP", keys=keys)  # what the worker did before
    assert_moved(refused.value)

    settings = Settings.from_env(base_env(redis_cluster.url(elsewhere), queue_key))
    with sync_client(settings.queue) as client:
        assert is_cluster(client)
        assert enqueue(client, "player", "#2PP", keys=keys)
    with redis_cluster.client() as check:
        assert check.llen(queue_key) == 1


def test_the_override_is_obeyed_both_ways(redis_cluster, queue_key, valkey_server):
    elsewhere = redis_cluster.not_owner(queue_key)
    forced_plain = Settings.from_env(base_env(redis_cluster.url(elsewhere), queue_key, REDIS_CLUSTER="false"))
    with sync_client(forced_plain.queue) as client:
        assert not is_cluster(client)
        with pytest.raises(redis.exceptions.ResponseError) as refused:
            enqueue(client, "player", "#2PP", keys=QueueKeys(queue_key))
        assert_moved(refused.value)

    single_node = f"redis://127.0.0.1:{valkey_server.port}"
    forced_cluster = Settings.from_env(base_env(single_node, queue_key, REDIS_CLUSTER="true"))
    with pytest.raises(
        ClusterUnavailable, match="Cluster mode is not enabled"
    ):  # redis-py's own exception, as a RedisError
        sync_client(forced_cluster.queue).llen(queue_key)
    with pytest.raises(ClusterUnavailable, match="Cluster mode is not enabled"):
        asyncio.run(_llen(forced_cluster, queue_key))


async def _llen(settings: Settings, key: str) -> int:
    client = await async_client(settings.queue)
    try:
        return await client.llen(key)
    finally:
        await client.aclose()


def test_detection_falls_back_to_cluster_info_when_info_is_refused(redis_cluster, queue_key):
    for node in redis_cluster.nodes:
        with node.client() as admin:
            for user, password, denied in (
                ("no-info", "pw-5", ["-info"]),
                ("neither", "pw-6", ["-info", "-cluster"]),
            ):
                admin.acl_setuser(
                    user, enabled=True, passwords=[f"+{password}"], keys="*", commands=["+@all", *denied]
                )
    port = redis_cluster.not_owner(queue_key).port

    async def detect(user: str, password: str) -> bool:
        settings = Settings.from_env(base_env(f"redis://{user}:{password}@127.0.0.1:{port}", queue_key))
        client = await async_client(settings.queue)
        try:
            await client.rpush(queue_key, b"x")
            return is_cluster(client)
        finally:
            await client.aclose()

    assert asyncio.run(detect("no-info", "pw-5"))
    with pytest.raises(ConfigError) as refused:
        asyncio.run(detect("neither", "pw-6"))
    assert refused.value.variable == "REDIS_CLUSTER" and "REDIS_CLUSTER=true" in str(refused.value)
    assert "pw-6" not in str(refused.value)


def test_a_database_number_is_refused_on_a_cluster_with_the_password_masked(redis_cluster, queue_key):
    node = redis_cluster.not_owner(queue_key)
    url = f"rediss://{APP_USER}:{CLUSTER_PASSWORD}@127.0.0.1:{node.tls_port}/3"
    env = base_env(url, queue_key, SSL_CERT_FILE=str(redis_cluster.tls.ca_file))

    done = run_worker(env, "enqueue", "player", "#2PP")

    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("configuration error: REDIS_URL: names database 3"), done.stderr
    assert "Traceback" not in done.stderr and CLUSTER_PASSWORD not in done.stdout + done.stderr
    with pytest.raises(ConfigError, match="only database 0"):
        asyncio.run(async_client(Settings.from_env(env).queue))


# -- a node dies mid-run --------------------------------------------------------------------


def test_killing_and_restarting_the_slot_owner_mid_run_loses_nothing(
    redis_cluster, queue_key, worker_env, database_url, simulator
):
    owner = redis_cluster.owner(queue_key)
    elsewhere = redis_cluster.not_owner(queue_key)
    env = {**worker_env, "REDIS_URL": redis_cluster.url(elsewhere), "REFRESH_QUEUE_KEY": queue_key}
    settings = Settings.from_env(env)
    keys = QueueKeys(queue_key)
    simulator.latency = (0.05, 0.15)
    items = [RefreshRequest(f"r{i}", "player", tag) for i, tag in enumerate(TAGS[:60])]
    every = {i.id for i in items}
    with redis_cluster.client() as check:
        check.rpush(keys.queue, *[encode(i) for i in items])

    ended: dict[str, object] = {}

    def run() -> None:
        try:
            ended["summary"] = drain(settings)
        except Exception as exc:  # a run must not end this way: kept to say so
            ended["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    try:
        wait_for(lambda: attempted(database_url) >= 1, "the run's first attempted row")
        owner.kill()
        runner.join(timeout=120)
        assert not runner.is_alive(), "the run did not end after its Redis node died"
    finally:
        if owner.proc is None:
            owner.start()  # same directory: its append-only file and nodes.conf
        redis_cluster.wait_ok()

    # The run halted cleanly: a summary saying Redis failed, not an exception.
    assert "error" not in ended, repr(ended.get("error"))
    summary = ended["summary"]
    assert (summary.stopped, summary.cause) == ("circuit_open", "redis_unavailable"), summary
    settled = settling(database_url)
    assert all(n == 1 for n in settled.values()), "a request settled twice"
    with redis_cluster.client() as check:
        queued, inflight = check.lrange(keys.queue, 0, -1), check.lrange(keys.inflight, 0, -1)
        assert inflight, "the run left nothing in flight: the kill came too late to test anything"
        ids = [orjson.loads(raw)["id"] for raw in queued + inflight]
        assert len(ids) == len(set(ids)), "an item is in Redis twice"
        assert set(ids) | set(settled) == every, f"lost: {every - set(ids) - set(settled)}"
        check.delete(keys.lease)  # the dead run's lease would expire by its TTL: expire it now

    summary = drain(settings)

    assert summary.stopped == "queue_empty", summary
    assert summary.recovered, "the next run found nothing to recover"
    assert settling(database_url) == dict.fromkeys(every, 1)
    with redis_cluster.client() as check:
        assert check.llen(keys.queue) == 0 and check.llen(keys.inflight) == 0


def attempted(database_url: str) -> int:
    return query(database_url, "SELECT count(*) AS n FROM refresh_ledger WHERE outcome = 'attempted'")[0]["n"]
