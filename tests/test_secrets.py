"""No secret reaches a log line, an answer or an error, even at DEBUG and when things fail.

Each test runs the handler with known secret values (a static API token, the developer-portal
password, the password in DATABASE_URL and in REDIS_URL) through a real login and a real
failure, then searches everything that came out: stdout and stderr (file-descriptor level),
the raw log records, the handler's answers and the text of any exception it raised.
"""

from __future__ import annotations

import logging
import secrets
import traceback
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
import pytest

from coclib.queue import RefreshRequest
from coclib.settings import Settings
from coclib.testing.lambda_context import rest_event, scheduled_event
from coclib.testing.portal import route_portal_to
from tests.helpers import push
from tests.test_handler import cold_invoker
from tests.test_health import refused_port

# Every library logger that could log a request, a key or a connection string.
LOUD_LOGGERS = ("coc", "coc.http", "aiohttp", "psycopg", "psycopg.pool", "redis", "asyncio")


@pytest.fixture
def invoke(monkeypatch, worker_env):
    yield from cold_invoker(monkeypatch, worker_env)


def token(label: str) -> str:
    return f"{label}-{secrets.token_hex(12)}"


class Run:
    """Collects everything one scenario produced, then searches it for secrets."""

    def __init__(self, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
        self.capfd, self.caplog = capfd, caplog
        self.answers: list[str] = []
        self.printed = ""

    def call(self, invoke, event) -> object:
        try:
            answer = invoke(event)
        except Exception as exc:  # the failure's text is output too
            self.answers.append("".join(traceback.format_exception(exc)))
            return exc
        self.answers.append(repr(answer))
        return answer

    def emitted(self) -> str:
        """stdout, stderr and the answers: what reaches CloudWatch and callers."""
        out, err = self.capfd.readouterr()
        self.printed += out + err
        return "\n".join([self.printed, *self.answers])

    def records(self) -> str:
        """The raw log records (messages and exception text), before any formatting."""
        texts = []
        for record in self.caplog.records:
            texts.append(record.getMessage())
            if record.exc_info:
                texts.append("".join(traceback.format_exception(*record.exc_info)))
        return "\n".join(texts)

    def assert_clean(self, *known: str) -> str:
        """No known secret in anything: emitted output, raw records, answers, errors."""
        text = self.emitted() + "\n" + self.records()
        for secret in known:
            for form in {secret, quote(secret, safe="")}:
                assert form not in text, f"a secret ({secret[:8]}…) reached the output"
        return text


@pytest.fixture
def run(capfd, caplog) -> Run:
    caplog.set_level(logging.DEBUG)
    return Run(capfd, caplog)


@pytest.fixture
def loud(request) -> Iterator[bool]:
    """Also turn every library logger to DEBUG (the configuration keeps them quieter)."""
    yield request.param
    for name in LOUD_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def make_loud(loud: bool) -> None:
    if loud:
        for name in LOUD_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)


def db_url_with_password(database_url: str, password: str, *, port: int | None = None) -> str:
    # A URI (the form a secrets manager usually hands out), the password percent-encoded. A
    # server on a Unix socket (embedded Postgres) is named in the query, as libpq reads it.
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    host, port = info.get("host", "127.0.0.1"), port or info.get("port", 5432)
    where, query = (f"{host}:{port}", "") if not host.startswith("/") else ("", f"?host={host}&port={port}")
    user = info.get("user", "postgres")
    return f"postgresql://{user}:{quote(password, safe='')}@{where}/{info['dbname']}{query}"


def req(i, tag="#2PP") -> RefreshRequest:
    return RefreshRequest(str(i), "player", tag, 1_700_000_000.0)


@pytest.mark.parametrize("loud", [False, True], indirect=True, ids=["debug", "every-logger-debug"])
def test_static_token_and_database_password_at_debug(
    loud, invoke, worker_env, database_url, redis_client, simulator, run
):
    api_token = token("static-api-token")
    db_password = token("db-p@ss/w:rd")  # characters that must be percent-encoded in a URL
    simulator.tokens.add(api_token)
    invoke.env(
        worker_env,
        LOG_LEVEL="DEBUG",
        COC_API_TOKENS=api_token,
        DATABASE_URL=db_url_with_password(database_url, db_password),
    )
    settings = Settings.from_env({**worker_env, "COC_API_TOKENS": api_token})
    push(redis_client, settings, req(1), req(2, tag="#2PQ"))
    simulator.not_found.add("#2PQ")

    run.call(invoke, rest_event("GET", "/health"))
    make_loud(loud)
    summary = run.call(invoke, scheduled_event())
    run.call(invoke, rest_event("POST", "/refresh", body='{"max_requests": 1}'))

    assert summary["processed_requests"] == 2  # the token really was used
    assert {c.token for c in simulator.calls} == {api_token}
    text = run.assert_clean(api_token, db_password)
    assert '"message":"outcome"' in text  # DEBUG lines were written
    if loud:
        assert "API HTTP Request" in text  # coc.py's DEBUG lines were written, and redacted


@pytest.mark.parametrize("loud", [False, True], indirect=True, ids=["debug", "every-logger-debug"])
def test_email_and_password_login_through_the_portal_at_debug(
    loud, invoke, worker_env, redis_client, simulator, run
):
    password = token("portal-password")
    original = simulator.password
    simulator.password = password
    env = {**worker_env, "COC_API_TOKENS": "", "COC_EMAIL": simulator.email, "COC_PASSWORD": password}
    invoke.env(env, LOG_LEVEL="DEBUG")
    push(redis_client, Settings.from_env(env), req(1))
    try:
        with route_portal_to(simulator.portal_url):
            run.call(invoke, rest_event("GET", "/health"))
            make_loud(loud)
            summary = run.call(invoke, scheduled_event())
    finally:
        simulator.password = original

    assert summary["processed_requests"] == 1, summary  # logged in, created a key, fetched
    portal_keys = [key["key"] for key in simulator.portal_keys]
    assert portal_keys
    text = run.assert_clean(password)
    # The keys coc.py created are secrets no setting names: redacted as what they are (JWTs).
    # (coc.py itself puts them into its raw DEBUG records; what matters is what is written.)
    emitted = run.emitted()
    assert not [key for key in portal_keys if key in emitted]
    if loud:
        assert "Key {" in text  # coc.py listed the portal's keys at DEBUG: the lines were written


def test_wrong_portal_password_fails_the_login_without_leaking_it(
    invoke, worker_env, redis_client, simulator, run
):
    wrong = token("wrong-password")
    env = {**worker_env, "COC_API_TOKENS": "", "COC_EMAIL": simulator.email, "COC_PASSWORD": wrong}
    invoke.env(env, LOG_LEVEL="DEBUG")
    push(redis_client, Settings.from_env(env), req(1))

    with route_portal_to(simulator.portal_url):
        make_loud(True)
        try:
            summary = run.call(invoke, scheduled_event())
        finally:
            for name in LOUD_LOGGERS:
                logging.getLogger(name).setLevel(logging.NOTSET)

    assert summary["stopped"] == "circuit_open" and summary["cause"].startswith("credentials")
    run.assert_clean(wrong)


def test_dead_database_and_redis_with_passwords_in_their_urls(
    invoke, worker_env, database_url, redis_url, run
):
    db_password = token("db-password")
    redis_password = token("redis-password")
    dead_db = db_url_with_password(database_url, db_password, port=refused_port())
    invoke.env(worker_env, LOG_LEVEL="DEBUG", DATABASE_URL=dead_db)
    make_loud(True)
    try:
        summary = run.call(invoke, scheduled_event())
        health = run.call(invoke, rest_event("GET", "/health"))

        invoke.env(
            worker_env, LOG_LEVEL="DEBUG", REDIS_URL=f"redis://:{redis_password}@127.0.0.1:{refused_port()}/0"
        )
        make_loud(True)
        redis_health = run.call(invoke, rest_event("GET", "/health"))
        failed = run.call(invoke, scheduled_event())
    finally:
        for name in LOUD_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)

    assert summary["stopped"] == "circuit_open" and "database_unavailable" in summary["cause"]
    assert health["statusCode"] == 503 and redis_health["statusCode"] == 503
    # No Redis, no lease: the invocation fails, or the run stops with the circuit open.
    assert isinstance(failed, Exception) or failed["stopped"] == "circuit_open"
    run.assert_clean(db_password, redis_password)


def test_a_careless_log_line_is_redacted_in_every_form(invoke, worker_env, database_url, simulator, run):
    # Nothing in the worker logs a secret today (the tests above would pass without any
    # redaction). This one proves the guard rail for the day something does: a library or a
    # new line that prints a URL, a password, a token or an API key, in a message, in an
    # `extra` field, in exception text, JSON-escaped or percent-encoded.
    api_token = token("static-api-token")
    password = token('portal-"quoted"-p@ss')
    db_password = token("db-p@ss/w:rd")
    db_url = db_url_with_password(database_url, db_password)
    simulator.tokens.add(api_token)
    invoke.env(
        worker_env, LOG_LEVEL="DEBUG", COC_API_TOKENS=api_token, COC_EMAIL="dev@example.com",
        COC_PASSWORD=password, DATABASE_URL=db_url,
    )  # fmt: skip
    run.call(invoke, rest_event("GET", "/health"))  # configures logging with these secrets
    jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzUxMiJ9.eyJzdWIiOiJkZXZlbG9wZXIvYWJjIn0.c2lnbmF0dXJl+/sig"
    careless = logging.getLogger("coc.http")
    careless.warning("connecting to %s with %s and %s (key %s)", db_url, password, api_token, jwt)
    careless.info("extra fields", extra={"settings": {"password": password, "url": db_url}})
    try:
        raise RuntimeError(f"login failed for password={password} token={api_token}")
    except RuntimeError:
        logging.getLogger("worker").exception("it broke")

    emitted = run.emitted()
    for secret in (api_token, password, db_password, quote(db_password, safe=""), jwt):
        assert secret not in emitted
    assert emitted.count("***") >= 8
    assert "connecting to postgresql://postgres:***@" in emitted
