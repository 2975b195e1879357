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
    assert s.coc_reqs_per_sec == 10
    assert s.coc_api_base_url == "https://api.clashofclans.com/v1"
    assert s.environment == "development" and s.log_level == "INFO"
    assert s.refresh_queue_key == "{coc:refresh}:queue"
    assert s.ledger_retention_days is None
    assert Settings.from_env({**BASE, "LEDGER_RETENTION_DAYS": "30"}).ledger_retention_days == 30
    assert not s.has_credentials


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
        ({"REFRESH_QUEUE_KEY": "no-hash-tag:queue"}, "REFRESH_QUEUE_KEY"),
        ({"LEDGER_RETENTION_DAYS": "0"}, "LEDGER_RETENTION_DAYS"),
        ({"LEDGER_RETENTION_DAYS": "a week"}, "LEDGER_RETENTION_DAYS"),
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
    assert s.coc_reqs_per_sec == 30
    assert "COC_REQS_PER_SEC" in caplog.text


def test_tokens_are_split_and_credentials_required_for_a_drain():
    s = Settings.from_env({**BASE, "COC_API_TOKENS": " tok-a, tok-b ,"})
    assert s.coc_api_tokens == ("tok-a", "tok-b") and s.has_credentials
    with pytest.raises(ConfigError, match="COC_API_TOKENS"):
        Settings.from_env(BASE).require_credentials()


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

    keys = QueueKeys(Settings.from_env({**BASE, "REFRESH_QUEUE_KEY": "{site-a}:refresh"}).refresh_queue_key)
    for key in (keys.queue, keys.inflight, keys.lease, keys.dead_letter, keys.pending("player", "#2PP")):
        assert key.startswith("{site-a}")
