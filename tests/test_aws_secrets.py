"""Secret settings by reference, end to end against moto in server mode.

moto runs as a real HTTP server on a free local port (`ThreadedMotoServer`); boto3 reaches it
through the standard `AWS_ENDPOINT_URL`, exactly as it would reach AWS, and Powertools'
parameters utility reads from it. Secrets Manager secrets and SSM SecureString parameters
(encrypted with moto's KMS) hold the values; the Lambda handler resolves them at its cold start
and drains with them. Every value is then searched for in everything the run printed or logged.
"""

from __future__ import annotations

import json
import logging
import socket
import urllib.request
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

import boto3
import psycopg
import pytest
from moto.server import ThreadedMotoServer

from coclib.aws_secrets import resolve_references
from coclib.errors import ConfigError
from coclib.settings import QueueSettings, Settings
from coclib.testing.lambda_context import rest_event, scheduled_event
from tests.helpers import push
from tests.test_handler import cold_invoker
from tests.test_health import refused_port
from tests.test_secrets import LOUD_LOGGERS, Run, db_url_with_password, make_loud, req, token

REGION = "eu-west-1"
BASE = {"DATABASE_URL": "postgresql://app@db.internal:5432/coc", "REDIS_URL": "redis://cache:6379/0"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's server on a free loopback port, for the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    yield url
    server.stop()


@pytest.fixture
def aws(moto_url, monkeypatch) -> Iterator[boto3.session.Session]:
    """A reset moto, and the AWS environment the SDK reads (as Lambda sets it, plus the endpoint)."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"), timeout=10)
    for name, value in {
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield boto3.session.Session(region_name=REGION)


def put_secret(session, name: str, value: str, *, region: str = REGION) -> str:
    client = session.client("secretsmanager", region_name=region)
    return client.create_secret(Name=name, SecretString=value)["ARN"]


def put_parameter(session, name: str, value: str) -> str:
    """A SecureString, encrypted with a customer managed key of moto's KMS."""
    key = session.client("kms").create_key(Description="coc secrets")["KeyMetadata"]["KeyId"]
    session.client("ssm").put_parameter(Name=name, Value=value, Type="SecureString", KeyId=key)
    return name


@pytest.fixture
def invoke(monkeypatch, worker_env, aws):
    yield from cold_invoker(monkeypatch, worker_env)


@pytest.fixture
def run(capfd, caplog) -> Run:
    caplog.set_level("DEBUG")
    return Run(capfd, caplog)


# -- the Lambda handler, cold start to drain ------------------------------------------------


def test_a_drain_with_every_secret_by_reference_leaks_none(
    aws, invoke, worker_env, database_url, redis_client, simulator, run, caplog, capfd
):
    api_token = token("static-api-token")
    simulator.tokens.add(api_token)
    # A server that trusts local connections gets a made-up password (it ignores it), which is
    # then searched for; one that checks passwords (CI's service container) keeps its own, too
    # plain ("postgres") to search for, and the token alone is.
    own_password = psycopg.conninfo.conninfo_to_dict(database_url).get("password")
    db_password = own_password or token("db-p@ss/w:rd")
    db_arn = put_secret(aws, "coc/prod/database-url", db_url_with_password(database_url, db_password))
    tokens_parameter = put_parameter(aws, "/coc/prod/api-tokens", f"{api_token}\n")
    invoke.env(
        worker_env,
        LOG_LEVEL="DEBUG",
        DATABASE_URL=None,
        COC_API_TOKENS=None,
        DATABASE_URL_SECRET_ARN=db_arn,
        COC_API_TOKENS_PARAMETER=tokens_parameter,
    )
    push(redis_client, Settings.from_env(worker_env), req(1))
    caplog.clear()  # the test's own puts above are not the function's output
    capfd.readouterr()

    # Every logger at DEBUG, the SDK's too: botocore then logs whole HTTP responses.
    make_loud(True)
    sdk = [logging.getLogger(name) for name in ("botocore", "boto3", "urllib3")]
    for logger in sdk:
        logger.setLevel(logging.DEBUG)
    try:
        summary = run.call(invoke, scheduled_event())
    finally:
        for logger in [*sdk, *map(logging.getLogger, LOUD_LOGGERS)]:
            logger.setLevel(logging.NOTSET)

    # The values came from moto: the token reached the API, the URL reached Postgres.
    assert summary["processed_requests"] == 1, summary
    assert {c.token for c in simulator.calls} == {api_token}
    text = run.assert_clean(api_token, *([] if own_password else [db_password]))
    # Where the secrets came from is logged, by name only.
    assert db_arn in text and tokens_parameter in text


def test_a_secret_that_cannot_be_read_fails_the_invocation_naming_the_variable(aws, invoke, worker_env, run):
    missing = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:coc/none-AbCdEf"
    invoke.env(worker_env, DATABASE_URL=None, DATABASE_URL_SECRET_ARN=missing)

    error = run.call(invoke, scheduled_event())

    assert isinstance(error, ConfigError)
    assert error.variable == "DATABASE_URL_SECRET_ARN"
    assert f"could not read secret {missing}" in str(error)
    assert "ResourceNotFoundException" in str(error)
    # The configuration error is the one logged line the Errors alarm's reader needs.
    assert '"variable":"DATABASE_URL_SECRET_ARN"' in run.emitted()


def test_a_redis_password_read_by_reference_is_blanked_from_every_log_line(aws, invoke, worker_env, run):
    # An ElastiCache RBAC user's URL. Nothing listens at its port, so the health check fails
    # with the URL in hand (the test Redis has no such user to log in as).
    password = token("redis-p@ss/w:rd")
    url = f"redis://worker:{quote(password, safe='')}@127.0.0.1:{refused_port()}/0"
    secret_arn = put_secret(aws, "coc/redis-url", url)
    invoke.env(worker_env, LOG_LEVEL="DEBUG", REDIS_URL=None, REDIS_URL_SECRET_ARN=secret_arn)
    make_loud(True)
    try:
        health = run.call(invoke, rest_event("GET", "/health"))
    finally:
        for name in LOUD_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)

    assert health["statusCode"] == 503  # the resolved URL was used: Redis refused at that port
    run.assert_clean(password)
    # And a line that carries the URL itself, as a library's connection message might.
    logging.getLogger("redis.connection").warning("connecting to %s", url)
    emitted = run.emitted()
    assert "connecting to redis://worker:***@127.0.0.1:" in emitted
    assert password not in emitted and quote(password, safe="") not in emitted


# -- the resolver ---------------------------------------------------------------------------


def test_secrets_manager_and_secure_string_values_become_the_settings(aws):
    password = token("portal-password")
    api_tokens = f"{token('a')},{token('b')}"
    env = {
        **BASE,
        "DATABASE_URL": "",
        "DATABASE_URL_PARAMETER": put_parameter(aws, "/coc/db", "postgresql://app:pw@db:5432/coc"),
        "COC_EMAIL": "ops@example.com",
        "COC_PASSWORD_SECRET_ARN": put_secret(aws, "coc/portal-password", password),
        "COC_API_TOKENS_SECRET_ARN": put_secret(aws, "coc/tokens", api_tokens),
    }

    settings = Settings.from_env(env, resolve=resolve_references)

    assert settings.database.database_url == "postgresql://app:pw@db:5432/coc"
    assert settings.api.coc_password == password
    assert settings.api.coc_api_tokens == tuple(api_tokens.split(","))
    assert {password, "pw", *api_tokens.split(",")} <= set(settings.secrets())  # redacted everywhere
    assert password not in repr(settings)


@pytest.mark.parametrize("store", ["secret", "parameter"])
def test_a_redis_url_by_secret_or_secure_string_becomes_the_setting(aws, store):
    url = f"rediss://worker:{token('redis-password')}@cache.example.com:6379/0"
    if store == "secret":
        reference = {"REDIS_URL_SECRET_ARN": put_secret(aws, "coc/redis-url", url)}
    else:
        reference = {"REDIS_URL_PARAMETER": put_parameter(aws, "/coc/redis-url", f"{url}\n")}
    env = {**BASE, "REDIS_URL": "", **reference}

    settings = Settings.from_env(env, resolve=resolve_references)

    assert settings.queue.redis_url == url
    assert urlsplit(url).password in settings.secrets()  # redacted everywhere
    assert urlsplit(url).password not in repr(settings)
    # A producer's settings (Redis alone) read it the same way.
    assert QueueSettings.from_env(env, resolve=resolve_references).redis_url == url


def test_a_secret_in_another_region_is_read_there(aws):
    arn = put_secret(aws, "coc/database-url", "postgresql://app@db:5432/coc", region="us-east-2")
    assert ":us-east-2:" in arn
    env = {**BASE, "DATABASE_URL": "", "DATABASE_URL_SECRET_ARN": arn}
    assert (
        Settings.from_env(env, resolve=resolve_references).database.database_url
        == "postgresql://app@db:5432/coc"
    )


@pytest.mark.parametrize(
    ("setting", "json_secret", "json_hint", "wrong_url", "read"),
    [
        (
            "DATABASE_URL",
            {"username": "app", "password": "hunter2-secret", "host": "db"},  # an RDS-managed secret
            "RDS-managed",
            "mysql://app:hunter2-secret@db/coc",
            Settings.from_env,
        ),
        (
            "REDIS_URL",
            {"username": "worker", "password": "hunter2-secret", "user_arn": "arn:x"},  # ElastiCache rotation
            "rediss://user:password@host:6379",
            "https://worker:hunter2-secret@cache:6379",
            QueueSettings.from_env,
        ),
    ],
)
def test_a_value_that_is_no_valid_setting_blames_the_reference_without_showing_it(
    aws, setting, json_secret, json_hint, wrong_url, read
):
    variable = f"{setting}_SECRET_ARN"
    env = {**BASE, setting: "", variable: put_secret(aws, f"coc/{setting}/json", json.dumps(json_secret))}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env, resolve=resolve_references)
    assert caught.value.variable == variable
    assert json_hint in str(caught.value) and "hunter2" not in str(caught.value)

    env[variable] = put_secret(aws, f"coc/{setting}/wrong", wrong_url)
    with pytest.raises(ConfigError) as caught:
        read(env, resolve=resolve_references)
    assert caught.value.variable == variable
    assert f"not a valid {setting}" in str(caught.value) and "hunter2" not in str(caught.value)


def test_an_empty_parameter_is_refused(aws):
    session = aws
    session.client("ssm").put_parameter(Name="/coc/blank", Value=" \n", Type="SecureString")
    env = {**BASE, "COC_EMAIL": "ops@example.com", "COC_PASSWORD_PARAMETER": "/coc/blank"}
    with pytest.raises(ConfigError, match=r"^COC_PASSWORD_PARAMETER: parameter /coc/blank is empty$"):
        Settings.from_env(env, resolve=resolve_references)


# -- references in the settings (no AWS needed) ----------------------------------------------

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:coc/db-AbCdEf"


@pytest.mark.parametrize(
    ("changes", "variable", "message"),
    [
        (
            {"DATABASE_URL": "", "DATABASE_URL_SECRET_ARN": ARN, "DATABASE_URL_PARAMETER": "/coc/db"},
            "DATABASE_URL_PARAMETER",
            "not both",
        ),
        ({"DATABASE_URL_SECRET_ARN": ARN}, "DATABASE_URL_SECRET_ARN", "DATABASE_URL is set too"),
        ({"DATABASE_URL": "", "DATABASE_URL_SECRET_ARN": "coc/db"}, "DATABASE_URL_SECRET_ARN", "ARN"),
        ({"COC_PASSWORD_PARAMETER": "has space"}, "COC_PASSWORD_PARAMETER", "parameter name"),
        ({"REDIS_URL_SECRET_ARN": ARN}, "REDIS_URL_SECRET_ARN", "REDIS_URL is set too"),
        ({"REDIS_URL_PARAMETER": "/coc/redis"}, "REDIS_URL_PARAMETER", "REDIS_URL is set too"),
    ],
)
def test_bad_references_are_named(changes, variable, message):
    with pytest.raises(ConfigError) as caught:
        Settings.references({**BASE, **changes})
    assert caught.value.variable == variable and message in str(caught.value)


@pytest.mark.parametrize("read", [Settings.from_env, QueueSettings.from_env], ids=["settings", "queue"])
def test_redis_url_and_a_reference_to_it_together_are_one_line_naming_the_reference(read):
    env = {**BASE, "REDIS_URL": "redis://:plain-pass-7@cache:6379/0", "REDIS_URL_SECRET_ARN": ARN}
    with pytest.raises(ConfigError) as caught:
        read(env, resolve=resolve_references)  # refused before anything is read
    assert caught.value.variable == "REDIS_URL_SECRET_ARN"
    assert str(caught.value) == (
        "REDIS_URL_SECRET_ARN: REDIS_URL is set too: give the value or a reference, not both"
    )


def test_without_a_resolver_a_reference_is_a_configuration_error():
    env = {**BASE, "DATABASE_URL": "", "DATABASE_URL_SECRET_ARN": ARN}
    with pytest.raises(ConfigError, match=r"^DATABASE_URL_SECRET_ARN: names a secret.*set DATABASE_URL"):
        Settings.from_env(env)
    # A producer's settings (`python -m worker enqueue`) say the same, not "REDIS_URL is required".
    env = {**BASE, "REDIS_URL": "", "REDIS_URL_PARAMETER": "/coc/redis"}
    with pytest.raises(ConfigError, match=r"^REDIS_URL_PARAMETER: names a secret.*set REDIS_URL itself"):
        QueueSettings.from_env(env)


def test_references_carry_the_region_of_their_arn():
    refs = Settings.references(
        {
            **BASE,
            "DATABASE_URL": "",
            "DATABASE_URL_SECRET_ARN": ARN.replace("eu-west-1", "us-east-2"),
            "COC_API_TOKENS_PARAMETER": "arn:aws:ssm:ap-south-1:123456789012:parameter/coc/tokens",
            "COC_PASSWORD_PARAMETER": "/coc/password",
        }
    )
    assert [(r.setting, r.store, r.region) for r in refs] == [
        ("DATABASE_URL", "secretsmanager", "us-east-2"),
        ("COC_PASSWORD", "ssm", None),
        ("COC_API_TOKENS", "ssm", "ap-south-1"),
    ]
