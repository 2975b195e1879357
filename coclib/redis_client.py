"""Redis clients from `Settings`: the one place that picks a plain or a cluster client.

The worker and producers reach the queue through whatever Redis the site runs: one node, a
Redis Cluster (ElastiCache cluster mode behind its configuration endpoint, ElastiCache
Serverless, a Valkey cluster), over TLS or not. A plain client pointed at a cluster node works
only for keys whose slot that node owns, and fails with MOVED for the rest, so the kind of
server decides the client:

* `REDIS_CLUSTER=true` or `false` says so up front;
* unset, the first connection asks the server: `INFO cluster` (its `cluster_enabled` field),
  and when INFO is refused or silent on it (a restricted ACL user, a proxy), `CLUSTER INFO`,
  which only a cluster answers. If neither tells, the error says to set `REDIS_CLUSTER`.

A cluster has only database 0, so a `/N` (or `?db=N`) other than 0 in `REDIS_URL` is a
configuration error there rather than a failing SELECT. `rediss://` verifies the server's
certificate and host name, against the system's CA store plus the bundle `SSL_CERT_FILE`
names. Every message this module writes shows the URL with its password masked.

redis-py's cluster client raises `RedisClusterException` (not a `RedisError`) when it cannot
reach the slot's node or map the cluster, for instance while a node restarts; the clients
built here raise `ClusterUnavailable`, a `RedisError`, instead, so code that treats
`RedisError` as "Redis is unavailable" (the drain halts cleanly on it) covers a cluster too.
Pipelines bypass that translation: callers of a cluster pipeline catch broadly (health and
the queue's `sizes()` do).
"""

from __future__ import annotations

from typing import Any, Protocol, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import (
    ClusterError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.retry import Retry

from coclib.errors import ConfigError
from coclib.errortext import describe
from coclib.reasons import REDIS_CONFIGURATION, Reason
from coclib.settings import cluster_db_problem, mask_url_password, redis_db

SyncRedis: TypeAlias = redis.Redis | redis.RedisCluster
AsyncRedis: TypeAlias = aioredis.Redis | aioredis.RedisCluster

CONNECT_TIMEOUT_SECONDS = 5.0
SOCKET_TIMEOUT_SECONDS = 10.0
HEALTH_CHECK_INTERVAL_SECONDS = 30
# A few quick tries (0.35-0.7 s of waiting in all), enough to follow a MOVED after a failover
# or ride out a dropped connection, short enough that a run facing a dead node halts within
# about a second, leaving its in-flight items for the next run.
RETRIES = 3
_BACKOFF = {"cap": 1.0, "base": 0.05}

_NOT_A_CLUSTER = "cluster support disabled"  # CLUSTER INFO's error on a plain server


class RedisSettings(Protocol):
    """What building a client reads: `coclib.settings.QueueSettings` (`Settings.queue`)."""

    redis_url: str
    redis_cluster: bool | None
    ssl_cert_file: str | None

    def secrets(self) -> tuple[str, ...]: ...


class ClusterUnavailable(ClusterError):
    """The cluster client could not reach the slot's node or map the cluster."""


class _SyncCluster(redis.RedisCluster):
    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise ClusterUnavailable(str(exc)) from exc


class _AsyncCluster(aioredis.RedisCluster):
    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise ClusterUnavailable(str(exc)) from exc


def sync_client(settings: RedisSettings) -> SyncRedis:
    """A client for `REDIS_URL`, plain or cluster (asking the server now unless `REDIS_CLUSTER` says).

    Raises `ConfigError` naming the variable to fix, or a `RedisError` if Redis does not answer.
    """
    cluster = settings.redis_cluster
    if cluster is None:
        probe = redis.Redis.from_url(_without_db(settings.redis_url), **_options(settings, Retry))
        try:
            cluster = _cluster_from_info(_ask(probe, "INFO", "cluster"))
            if cluster is None:
                cluster = _cluster_from_cluster_info(settings, _ask(probe, "CLUSTER INFO"))
        finally:
            probe.close()
    if not cluster:
        return redis.Redis.from_url(settings.redis_url, **_options(settings, Retry))
    _check_cluster_url(settings)
    try:  # the sync cluster client maps the cluster as it is built
        return _SyncCluster.from_url(_without_db(settings.redis_url), **_options(settings, Retry))
    except RedisClusterException as exc:
        raise ClusterUnavailable(str(exc)) from exc


async def async_client(settings: RedisSettings) -> AsyncRedis:
    """The asyncio client for `REDIS_URL`; as `sync_client`, without blocking the loop."""
    cluster = settings.redis_cluster
    if cluster is None:
        probe = aioredis.Redis.from_url(_without_db(settings.redis_url), **_options(settings, AsyncRetry))
        try:
            cluster = _cluster_from_info(await _aask(probe, "INFO", "cluster"))
            if cluster is None:
                cluster = _cluster_from_cluster_info(settings, await _aask(probe, "CLUSTER INFO"))
        finally:
            await probe.aclose()
    if cluster:
        _check_cluster_url(settings)
        return _AsyncCluster.from_url(_without_db(settings.redis_url), **_options(settings, AsyncRetry))
    return aioredis.Redis.from_url(settings.redis_url, **_options(settings, AsyncRetry))


def redis_fault(exc: RedisError) -> tuple[Reason, str]:
    """The reason code of a Redis error and its detail (`describe(exc)`, with the hint for a
    configuration fault): `redis_wrong_type`, `redis_out_of_memory`, `redis_read_only`, or for
    anything else (a dropped connection, a timeout, a cluster node failing over, LOADING) the
    outage, `redis_unavailable`."""
    if isinstance(exc, OutOfMemoryError) or str(exc).startswith("OOM "):
        reason = Reason.REDIS_OUT_OF_MEMORY
    elif isinstance(exc, ReadOnlyError) or str(exc).startswith("READONLY "):
        reason = Reason.REDIS_READ_ONLY
    elif isinstance(exc, ResponseError) and "WRONGTYPE " in str(exc):  # a pipeline wraps it
        # Redis's own error, or the queue scripts' check (`coclib.queue`), which names the key.
        reason = Reason.REDIS_WRONG_TYPE
    else:
        return Reason.REDIS_UNAVAILABLE, describe(exc)
    return reason, f"{describe(exc)} ({REDIS_CONFIGURATION[reason]})"


def is_cluster(client: SyncRedis | AsyncRedis) -> bool:
    """Whether `client` is a cluster client."""
    return isinstance(client, redis.RedisCluster | aioredis.RedisCluster)


# -- detection ----------------------------------------------------------------------------


def _ask(client: redis.Redis, *command: str) -> Any:
    try:
        return client.execute_command(*command)
    except ResponseError as exc:  # refused (NOPERM, unknown command, not a cluster): an answer too
        return exc


async def _aask(client: aioredis.Redis, *command: str) -> Any:
    try:
        return await client.execute_command(*command)
    except ResponseError as exc:
        return exc


def _cluster_from_info(info: Any) -> bool | None:
    """INFO cluster's verdict, or None when it gave none."""
    if isinstance(info, dict) and "cluster_enabled" in info:
        return str(info["cluster_enabled"]) == "1"
    return None


def _cluster_from_cluster_info(settings: RedisSettings, answer: Any) -> bool:
    if not isinstance(answer, Exception):
        return True
    if _NOT_A_CLUSTER in str(answer).lower():
        return False
    raise ConfigError(
        "REDIS_CLUSTER",
        f"could not tell whether the server at {mask_url_password(settings.redis_url)} is a Redis "
        f"Cluster (INFO cluster gave no answer; CLUSTER INFO: {answer}); set REDIS_CLUSTER=true or false",
    )


# -- building -----------------------------------------------------------------------------


def _check_cluster_url(settings: RedisSettings) -> None:
    url = settings.redis_url
    if url.startswith("unix://"):
        raise ConfigError(
            "REDIS_URL",
            f"{mask_url_password(url)} is a Redis Cluster node, and a cluster is reached over "
            "redis:// or rediss://, not a unix socket",
        )
    db = redis_db(url)
    if db != 0:
        raise ConfigError("REDIS_URL", cluster_db_problem(db))


def _without_db(url: str) -> str:
    """`url` without a database: the probe must not SELECT (a cluster refuses it)."""
    parts = urlsplit(url)
    query = "&".join(q for q in parts.query.split("&") if q and not q.startswith("db="))
    if parts.scheme == "unix":  # urlunsplit would drop the '//' of unix:///path/to/socket
        return f"unix://{parts.netloc}{parts.path}" + (f"?{query}" if query else "")
    return urlunsplit(parts._replace(path="", query=query))


def _options(settings: RedisSettings, retry_class: type[Retry] | type[AsyncRetry]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "health_check_interval": HEALTH_CHECK_INTERVAL_SECONDS,
        "retry": retry_class(EqualJitterBackoff(**_BACKOFF), RETRIES),
    }
    if settings.redis_url.startswith("rediss://"):
        # Stated, not left to redis-py's defaults, which have changed between versions.
        options |= {
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": True,
            "ssl_ca_certs": settings.ssl_cert_file,
        }
    return options
