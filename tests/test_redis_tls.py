"""TLS and ACL users against the session's TLS-only Redis (`tests.redis_servers.tls_redis`).

The server has no plain port, the default user off and an `app` user with a password, as an
ElastiCache cache with in-transit encryption and RBAC. Certificates are always verified: a CA
the machine does not trust is refused unless `SSL_CERT_FILE` names it, and a certificate for
another host name is refused too. Whatever fails, the Redis password never shows.
(The drain, enqueue, health, recovery and lease over TLS are in `test_redis_deployments`.)
"""

from __future__ import annotations

import contextlib
import subprocess

import orjson
import pytest

from coclib.testing.lambda_context import rest_event
from tests.redis_servers import TLS_PASSWORD
from tests.test_handler import cold_invoker
from tests.test_redis_deployments import run_worker

QUEUE_KEY = "{tls-tests}:queue"


@pytest.fixture
def tls_env(tls_redis, tls_material, worker_env) -> dict[str, str]:
    url = f"rediss://app:{TLS_PASSWORD}@127.0.0.1:{tls_redis.tls_port}/1"
    yield {
        **worker_env,
        "REDIS_URL": url,
        "REFRESH_QUEUE_KEY": QUEUE_KEY,
        "SSL_CERT_FILE": str(tls_material.ca_file),
    }
    with tls_redis.client(db=1) as client:
        client.flushdb()


def assert_refused(done: subprocess.CompletedProcess, *expected: str) -> None:
    """Exit 1 with one line on stderr saying what Redis did, no password, no traceback."""
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ") and "Redis" in line, output
    for text in expected:
        assert text in line, output
    assert TLS_PASSWORD not in output and "Traceback" not in output


ENQUEUE_REFUSED = "error: cannot reach Redis at rediss://app:***@127.0.0.1:"


def test_with_the_ca_named_enqueue_works(tls_env, tls_redis):
    done = run_worker(tls_env, "enqueue", "clan", "#2PP")

    assert done.returncode == 0, done.stderr
    with tls_redis.client(db=1) as client:
        assert client.llen(QUEUE_KEY) == 1


def test_an_untrusted_ca_is_refused_by_default(tls_env):
    env = {k: v for k, v in tls_env.items() if k != "SSL_CERT_FILE"}

    assert_refused(run_worker(env, "enqueue", "player", "#2PP"), ENQUEUE_REFUSED, "certificate verify failed")
    assert_refused(run_worker(env, "drain", "--seconds", "5"), "certificate verify failed")


def test_a_certificate_for_another_host_name_is_refused(tls_env, tls_redis):
    # The certificate names 127.0.0.1 only; localhost resolves there, but is not on it.
    url = f"rediss://app:{TLS_PASSWORD}@localhost:{tls_redis.tls_port}/1"

    done = run_worker({**tls_env, "REDIS_URL": url}, "enqueue", "player", "#2PP")

    assert_refused(done, "rediss://app:***@localhost:", "Hostname mismatch")


def test_a_wrong_password_is_reported_without_either_password(tls_env, tls_redis):
    wrong = "not-the-password-42"
    url = f"rediss://app:{wrong}@127.0.0.1:{tls_redis.tls_port}/1"

    done = run_worker({**tls_env, "REDIS_URL": url}, "enqueue", "player", "#2PP")

    assert_refused(done, ENQUEUE_REFUSED, "AuthenticationError")
    assert wrong not in done.stdout + done.stderr


def test_turning_verification_off_in_the_url_is_a_configuration_error(tls_env):
    url = tls_env["REDIS_URL"] + "?ssl_cert_reqs=none"

    done = run_worker({**tls_env, "REDIS_URL": url}, "enqueue", "player", "#2PP")

    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("configuration error: REDIS_URL: TLS certificates are always verified")


def test_health_says_why_when_tls_fails_and_shows_no_password(tls_env, monkeypatch):
    env = {k: v for k, v in tls_env.items() if k != "SSL_CERT_FILE"}
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)

    with contextlib.contextmanager(cold_invoker)(monkeypatch, env) as invoke:
        response = invoke(rest_event("GET", "/health"))

    health = orjson.loads(response["body"])
    assert response["statusCode"] == 503 and health["status"] == "unhealthy"
    assert "certificate verify failed" in health["checks"]["redis"]["error"], health
    assert TLS_PASSWORD not in response["body"]
