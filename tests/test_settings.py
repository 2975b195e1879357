"""Settings: every variable validated, one message naming the bad one, secrets masked."""

from __future__ import annotations

import logging

import pytest

from coclib.errors import ConfigError
from coclib.settings import Settings

BASE = {
    "DATABASE_URL": "postgresql://app:s3cr3t-db@db.internal:5432/coc",
    "REDIS_URL": "redis://cache:6379/0",
}


def test_defaults():
    s = Settings.from_env(BASE)
    assert s.api.coc_reqs_per_sec == 10
    assert s.api.coc_api_base_url == "https://api.clashofclans.com/v1"
    assert s.environment == "development" and s.log_level == "INFO"
    assert s.queue.refresh_queue_key == "{coc:refresh}:queue"
    assert s.ledger_retention_days is None
    assert s.drain_linger_seconds == 120
    assert Settings.from_env({**BASE, "DRAIN_LINGER_SECONDS": "0"}).drain_linger_seconds == 0
    assert Settings.from_env({**BASE, "LEDGER_RETENTION_DAYS": "30"}).ledger_retention_days == 30
    assert not s.api.has_credentials
    assert s.freshness is True
    assert Settings.from_env({**BASE, "FRESHNESS": "off"}).freshness is False
    assert Settings.from_env({**BASE, "FRESHNESS": " ON "}).freshness is True


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        ({"DATABASE_URL": ""}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"REDIS_URL": None}, "REDIS_URL"),
        ({"REDIS_URL": "http://cache"}, "REDIS_URL"),
        ({"COC_REQS_PER_SEC": "fast"}, "COC_REQS_PER_SEC"),
        ({"COC_REQS_PER_SEC": "0"}, "COC_REQS_PER_SEC"),
        ({"COC_REQS_PER_SEC": "-3"}, "COC_REQS_PER_SEC"),
        ({"COC_REQS_PER_SEC": "nan"}, "COC_REQS_PER_SEC"),
        ({"ENVIRONMENT": "prod"}, "ENVIRONMENT"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"COC_EMAIL": "a@b.c"}, "COC_PASSWORD"),
        ({"COC_PASSWORD": "pw-only"}, "COC_EMAIL"),
        ({"COC_API_BASE_URL": "api.example"}, "COC_API_BASE_URL"),
        ({"REDIS_URL": "redis://cache:port/0"}, "REDIS_URL"),
        ({"REDIS_URL": "redis:///0"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://cache:6379/zero"}, "REDIS_URL"),
        ({"REDIS_URL": "rediss://cache:6379/0?ssl_cert_reqs=none"}, "REDIS_URL"),
        ({"REDIS_URL": "rediss://cache:6379/0?ssl_check_hostname=false"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://cache:6379/3", "REDIS_CLUSTER": "true"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://cache:6379?db=2", "REDIS_CLUSTER": "yes"}, "REDIS_URL"),
        ({"REDIS_URL": "unix:///tmp/redis.sock", "REDIS_CLUSTER": "true"}, "REDIS_URL"),
        ({"REDIS_CLUSTER": "maybe"}, "REDIS_CLUSTER"),
        ({"REDIS_URL": "rediss://cache:6379/0", "SSL_CERT_FILE": "/nonexistent/ca.pem"}, "SSL_CERT_FILE"),
        ({"LEDGER_RETENTION_DAYS": "0"}, "LEDGER_RETENTION_DAYS"),
        ({"LEDGER_RETENTION_DAYS": "a week"}, "LEDGER_RETENTION_DAYS"),
        ({"FRESHNESS": "sometimes"}, "FRESHNESS"),
        ({"DRAIN_LINGER_SECONDS": "-1"}, "DRAIN_LINGER_SECONDS"),
        ({"DRAIN_LINGER_SECONDS": "901"}, "DRAIN_LINGER_SECONDS"),
        ({"DRAIN_LINGER_SECONDS": "a while"}, "DRAIN_LINGER_SECONDS"),
    ],
)
def test_a_bad_setting_is_one_error_naming_the_variable(changes, variable):
    env = {**BASE, **changes}
    env = {k: v for k, v in env.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.variable == variable
    assert str(info.value).startswith(f"{variable}: ")
    assert "s3cr3t-db" not in str(info.value) and "pw-only" not in str(info.value)


def test_rate_above_30_is_clamped_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        s = Settings.from_env({**BASE, "COC_REQS_PER_SEC": "45"})
    assert s.api.coc_reqs_per_sec == 30
    assert "COC_REQS_PER_SEC" in caplog.text


def test_tokens_are_split_and_credentials_required_for_a_drain():
    s = Settings.from_env({**BASE, "COC_API_TOKENS": " tok-a, tok-b ,"})
    assert s.api.coc_api_tokens == ("tok-a", "tok-b") and s.api.has_credentials
    with pytest.raises(ConfigError, match="COC_API_TOKENS"):
        Settings.from_env(BASE).api.require_credentials()


def test_repr_masks_every_secret():
    s = Settings.from_env(
        {
            **BASE,
            "COC_EMAIL": "dev@example.com",
            "COC_PASSWORD": "hunter2-portal",
            "COC_API_TOKENS": "eyJtoken.xyz",
            "REDIS_URL": "rediss://:redis-pass-9@cache:6380/0",
        }
    )
    shown = repr(s) + str(s)
    for secret in ("s3cr3t-db", "hunter2-portal", "eyJtoken.xyz", "redis-pass-9"):
        assert secret not in shown
    assert "db.internal" in shown and "dev@example.com" in shown
    assert set(s.secrets()) == {"s3cr3t-db", "hunter2-portal", "eyJtoken.xyz", "redis-pass-9"}


def test_queue_key_hash_tag_is_kept_by_every_derived_key():
    from coclib.keys import QueueKeys

    keys = QueueKeys(
        Settings.from_env({**BASE, "REFRESH_QUEUE_KEY": "{site-a}:refresh"}).queue.refresh_queue_key
    )
    for key in (keys.queue, keys.inflight, keys.lease, keys.dead_letter, keys.pending("player", "#2PP")):
        assert key.startswith("{site-a}")


def test_any_queue_key_is_accepted_and_one_without_a_tag_becomes_the_tag():
    from coclib.keys import QueueKeys

    s = Settings.from_env({**BASE, "REFRESH_QUEUE_KEY": "refresh_queue"})
    assert s.queue.refresh_queue_key == "refresh_queue"
    keys = QueueKeys(s.queue.refresh_queue_key)
    assert keys.queue == "refresh_queue" and keys.inflight == "{refresh_queue}:inflight"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, None), ("true", True), ("TRUE", True), ("1", True), ("false", False), ("no", False)],
)
def test_redis_cluster_overrides_detection_either_way(raw, expected):
    env = {**BASE, "REDIS_URL": "redis://cache:6379"} | ({} if raw is None else {"REDIS_CLUSTER": raw})
    assert Settings.from_env(env).queue.redis_cluster is expected


def test_a_database_other_than_0_is_fine_until_the_server_is_a_cluster():
    assert Settings.from_env({**BASE, "REDIS_URL": "redis://cache:6379/3"}).queue.redis_cluster is None
    assert Settings.from_env({**BASE, "REDIS_URL": "redis://cache:6379/0", "REDIS_CLUSTER": "true"})
    with pytest.raises(ConfigError, match=r"only database 0.*\(/3\) out of the URL"):
        Settings.from_env({**BASE, "REDIS_URL": "redis://:pw-9@cache:6379/3", "REDIS_CLUSTER": "true"})


def test_ssl_cert_file_is_read_for_rediss_only(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    tls = Settings.from_env({**BASE, "REDIS_URL": "rediss://cache:6379", "SSL_CERT_FILE": str(bundle)})
    assert tls.queue.ssl_cert_file == str(bundle)
    plain = Settings.from_env({**BASE, "SSL_CERT_FILE": "/nonexistent/ca.pem"})
    assert plain.queue.ssl_cert_file is None  # not ours to judge when Redis is not on TLS


def test_repr_masks_the_password_of_a_key_value_database_url():
    s = Settings.from_env({**BASE, "DATABASE_URL": "host=db.internal dbname=coc password=kv-s3cr3t"})
    assert "kv-s3cr3t" in s.secrets()
    assert "kv-s3cr3t" not in repr(s) and "db.internal" in repr(s)


def test_a_group_field_without_a_variable_is_refused_naming_both():
    """A new setting is an entry in VARIABLES plus a field named after it; a field alone is a
    mistake, said at import rather than as an AttributeError on first use."""
    from dataclasses import dataclass

    from coclib.settings import _Group

    @dataclass(frozen=True, repr=False)
    class Half(_Group):
        drain_lingr_seconds: float

    with pytest.raises(TypeError, match=r"Half\.drain_lingr_seconds: add DRAIN_LINGR_SECONDS to VARIABLES"):
        Half.variables()
