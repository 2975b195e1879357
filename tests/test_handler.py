"""`lambda_handler` driven with real event shapes, against real Postgres, Redis and the simulator.

The handler reads its settings from the environment (that is its contract), so these tests
set the variables with monkeypatch and start every test from a cold container.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from coclib.errors import ConfigError
from coclib.keys import QueueKeys
from coclib.queue import RefreshRequest
from coclib.settings import VARIABLES
from coclib.testing.lambda_context import (
    LambdaContext,
    alb_event,
    http_api_event,
    rest_event,
    scheduled_event,
)
from tests.helpers import ledger, push, queue_items
from worker import lambda_function
from worker.http import REFRESH_BUDGET_SECONDS, refresh_seconds

ROOT = Path(__file__).resolve().parent.parent
SETTING_NAMES = tuple(VARIABLES)
METRIC_NAMES = {
    "processed_requests", "queue_size", "api_requests_per_second", "fetched", "failed",
    "deferred", "skipped_deadline", "attempted", "run_duration_ms", "inflight_size", "ledger_bytes",
    "halted",
    "skipped_fresh", "changed_share_player",
    "priority_queue_size",
}  # fmt: skip


# -- fixtures and helpers -----------------------------------------------------------------


class Invoker:
    """Calls `lambda_handler` as Lambda does, with the environment a test gives it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
        self.monkeypatch = monkeypatch
        self.env(env)

    def env(self, env: dict[str, str], **changes: str | None) -> None:
        """Set the function's environment (a cold start: the next call builds a new container)."""
        lambda_function.shutdown()
        for name in SETTING_NAMES:
            self.monkeypatch.delenv(name, raising=False)
        for name, value in {**env, **changes}.items():
            if value is not None:
                self.monkeypatch.setenv(name, value)

    def __call__(self, event: Any, context: LambdaContext | None = None) -> Any:
        return lambda_function.lambda_handler(event, context or LambdaContext())


def reset_logging() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__module__ == "worker.logs":
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def cold_invoker(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Iterator[Invoker]:
    """The `invoke` fixture of the handler tests: a cold container, closed afterwards."""
    invoker = Invoker(monkeypatch, env)
    yield invoker
    lambda_function.shutdown()
    reset_logging()


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str]) -> Iterator[Invoker]:
    yield from cold_invoker(monkeypatch, worker_env)


def req(
    i: int | str, kind: str = "player", tag: str = "#2PP", enqueued_at: float | None = None
) -> RefreshRequest:
    return RefreshRequest(str(i), kind, tag, enqueued_at or time.time())


def body(response: dict[str, Any]) -> Any:
    return orjson.loads(response["body"])


def header(response: dict[str, Any], name: str) -> str | None:
    values = (response.get("multiValueHeaders") or {}).get(name) or []
    return values[0] if values else (response.get("headers") or {}).get(name)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every stdout line, parsed; fails the test if one is not JSON."""
    lines = []
    for line in text.splitlines():
        if line.strip():
            try:
                lines.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                pytest.fail(f"a stdout line is not JSON: {line[:300]!r}")
    return lines


def emf_lines(text: str) -> list[dict[str, Any]]:
    return [line for line in json_lines(text) if "_aws" in line]


def redis_state(client) -> dict[bytes, Any]:
    """Every key with its value, for before/after comparisons."""
    state = {}
    for key in client.keys("*"):
        kind = client.type(key)
        if kind == b"list":
            state[key] = client.lrange(key, 0, -1)
        elif kind == b"string":
            state[key] = client.get(key)
        else:
            state[key] = kind
    return state


# -- the scheduled event ---------------------------------------------------------------------


def test_scheduled_event_drains_and_returns_the_run_summary(invoke, settings, redis_client, database_url):
    push(redis_client, settings, req("a"), req("b", "clan", "#8QU8J9LP"), req("c", "war", "#8QU8J9LP"))

    summary = invoke(scheduled_event())

    assert summary["stopped"] == "queue_empty"
    assert summary["processed_requests"] == 3
    assert summary["counts"] == {"attempted": 3, "fetched": 3}
    assert summary["queue_size"] == 0 and summary["inflight_size"] == 0
    assert {r["request_id"] for r in ledger(database_url) if r["outcome"] == "fetched"} == {"a", "b", "c"}
    assert queue_items(redis_client, settings) == []


def test_a_run_publishes_emf_metrics_with_the_environment_and_function_dimensions(
    invoke, worker_env, settings, redis_client, simulator, capfd
):
    invoke.env(worker_env, ENVIRONMENT="staging")
    simulator.not_found.add("#2PQ")
    push(redis_client, settings, req(1), req(2, tag="#2PQ"), req(3, tag="#2PR"))

    summary = invoke(scheduled_event(), LambdaContext(function_name="coc-refresh-staging"))

    [emf] = emf_lines(capfd.readouterr().out)
    [directive] = emf["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "CocRefreshWorker"
    # FunctionName: two deployments in one account and environment never mix their metrics.
    assert directive["Dimensions"] == [["environment", "FunctionName"]]
    assert emf["environment"] == "staging" and emf["FunctionName"] == "coc-refresh-staging"
    assert emf["halted"] == [0] or emf["halted"] == 0
    assert {m["Name"] for m in directive["Metrics"]} == METRIC_NAMES
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units["run_duration_ms"] == "Milliseconds" and units["api_requests_per_second"] == "Count/Second"
    values = {name: emf[name][0] if isinstance(emf[name], list) else emf[name] for name in METRIC_NAMES}
    assert values["processed_requests"] == 3
    assert values["fetched"] == 2 and values["failed"] == 1 and values["attempted"] == 3
    assert values["deferred"] == 0 and values["skipped_deadline"] == 0 and values["skipped_fresh"] == 0
    assert values["changed_share_player"] == 100.0 and units["changed_share_player"] == "Percent"
    assert values["queue_size"] == 0
    assert values["api_requests_per_second"] == summary["api_requests_per_second"] > 0
    assert values["run_duration_ms"] == pytest.approx(summary["duration_s"] * 1000, abs=1)
    assert emf["run_id"] == summary["run_id"] and emf["stopped"] == "queue_empty"
    assert emf["trigger"] == "scheduled"


@pytest.mark.parametrize("fault, cause", [("maintenance", "maintenance"), ("invalid_ip", "forbidden")])
def test_a_run_that_halts_says_so_in_a_metric_by_cause(
    invoke, settings, redis_client, simulator, capfd, fault, cause
):
    """The invocation succeeds, so no Lambda metric sees the halt: `halted` does, per run, and
    again with its cause (the alarm leaves `maintenance` out by that dimension)."""
    setattr(simulator, fault, True)
    push(redis_client, settings, req(1), req(2, tag="#2PQ"))

    summary = invoke(scheduled_event(), LambdaContext(function_name="coc-refresh-prod"))

    assert (summary["stopped"], summary["cause"]) == ("circuit_open", cause)
    run_line, by_cause = emf_lines(capfd.readouterr().out)
    assert run_line["halted"] in (1, [1])
    [directive] = by_cause["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "CocRefreshWorker"
    assert directive["Dimensions"] == [["environment", "FunctionName", "cause"]]
    assert [m["Name"] for m in directive["Metrics"]] == ["halted"]
    assert by_cause["halted"] in (1, [1]) and by_cause["cause"] == cause
    assert by_cause["FunctionName"] == "coc-refresh-prod" and by_cause["environment"] == "development"


def test_logs_are_json_with_a_debug_line_per_outcome_and_an_info_run_summary(
    invoke, worker_env, settings, redis_client, simulator, capfd
):
    invoke.env(worker_env, LOG_LEVEL="DEBUG")
    simulator.not_found.add("#2PQ")
    push(redis_client, settings, req("ok"), req("gone", tag="#2PQ"))
    context = LambdaContext()

    summary = invoke(scheduled_event(), context)

    lines = [line for line in json_lines(capfd.readouterr().out) if "_aws" not in line]
    outcomes = [line for line in lines if line.get("message") == "outcome"]
    assert {(o["ledger"]["request_id"], o["ledger"]["outcome"]) for o in outcomes} == {
        ("ok", "attempted"), ("ok", "fetched"), ("gone", "attempted"), ("gone", "failed"),
    }  # fmt: skip
    assert all(o["level"] == "DEBUG" and o["run_id"] == summary["run_id"] for o in outcomes)
    [finished] = [line for line in lines if line.get("message") == "run finished"]
    assert finished["level"] == "INFO"
    assert finished["summary"]["run_id"] == summary["run_id"] and finished["trigger"] == "scheduled"
    for line in lines:  # every line carries the invocation and the service
        assert line["function_request_id"] == context.aws_request_id
        assert line["service"] == "coc-refresh-worker" and line["environment"] == "development"
        assert line["cold_start"] is True


def test_at_info_there_is_no_line_per_outcome(invoke, settings, redis_client, capfd):
    push(redis_client, settings, req(1))

    invoke(scheduled_event())

    lines = json_lines(capfd.readouterr().out)
    assert not [line for line in lines if line.get("message") == "outcome"]
    assert [line for line in lines if line.get("message") == "run finished"]


# -- API Gateway: GET /health and POST /refresh ------------------------------------------------


def test_get_health_answers_200_with_stats_queue_size_and_oldest_age(invoke, settings, redis_client):
    invoke(scheduled_event())  # one run, so the ledger has a last run
    enqueued_at = time.time() - 30
    push(redis_client, settings, req(1, enqueued_at=enqueued_at), req(2, tag="#2PQ"))

    before = time.time()
    response = invoke(rest_event("GET", "/health"))
    after = time.time()

    assert response["statusCode"] == 200
    assert header(response, "Content-Type") == "application/json"
    assert header(response, "Cache-Control") == "no-store"
    health = body(response)
    assert health["status"] == "healthy" and health["reasons"] == []
    assert health["queue_size"] == 2 and health["inflight_size"] == 0
    # Bracketed by clock readings around the call, so a slow machine cannot push them out.
    assert before - enqueued_at - 0.001 <= health["oldest_queued_age_seconds"] <= after - enqueued_at + 0.001
    assert before - 0.01 <= health["timestamp"] <= after + 0.01
    assert health["ledger"]["window_seconds"] == 3600
    assert health["ledger"]["last_run_stopped"] == "queue_empty"
    assert health["checks"]["postgres"]["ok"] and health["checks"]["redis"]["ok"]
    assert len(queue_items(redis_client, settings)) == 2  # health took nothing


def test_post_refresh_drains_at_most_max_requests(invoke, settings, redis_client, database_url, capfd):
    push(
        redis_client,
        settings,
        *[req(i, tag=t) for i, t in enumerate(["#2PP", "#2PQ", "#2PR", "#2PU", "#2PV"])],
    )

    response = invoke(rest_event("POST", "/refresh", body='{"max_requests": 2}'))

    assert response["statusCode"] == 200
    summary = body(response)
    assert summary["taken"] == 2 and summary["processed_requests"] == 2
    assert summary["stopped"] == "max_requests"
    assert len(queue_items(redis_client, settings)) == 3
    assert {r["request_id"] for r in ledger(database_url) if r["outcome"] == "fetched"} == {"0", "1"}
    [emf] = emf_lines(capfd.readouterr().out)
    assert emf["trigger"] == "http"


def test_post_refresh_without_a_body_drains_the_queue(invoke, settings, redis_client):
    push(redis_client, settings, req(1), req(2, tag="#2PQ"))

    response = invoke(rest_event("POST", "/refresh"))

    assert response["statusCode"] == 200
    assert body(response)["processed_requests"] == 2
    assert queue_items(redis_client, settings) == []


def test_post_refresh_accepts_a_base64_encoded_body(invoke, settings, redis_client):
    push(redis_client, settings, req(1), req(2, tag="#2PQ"))
    event = rest_event("POST", "/refresh", body='{"max_requests": 1}')
    event["body"], event["isBase64Encoded"] = "eyJtYXhfcmVxdWVzdHMiOiAxfQ==", True

    response = invoke(event)

    assert body(response)["taken"] == 1


def test_post_refresh_is_bounded_by_lambda_time_left_and_api_gateway(
    invoke, settings, redis_client, simulator
):
    # The cap: whatever Lambda has left, a refresh drains for at most 24 s (API Gateway: 29).
    assert refresh_seconds(295.0) == REFRESH_BUDGET_SECONDS == 24.0
    assert refresh_seconds(3.0) == 3.0 and refresh_seconds(-1.0) == 0.0
    # The floor, for real: with 7 s left (2 s after the 5-second buffer), a slow queue stops at the
    # deadline. What says so is the run itself (stopped: deadline, work left), not a stopwatch.
    simulator.latency = (0.4, 0.4)
    push(redis_client, settings, *[req(i) for i in range(200)])

    response = invoke(rest_event("POST", "/refresh"), LambdaContext(timeout_seconds=7))

    summary = body(response)
    assert response["statusCode"] == 200 and summary["stopped"] == "deadline"
    assert summary["counts"].get("skipped-deadline", 0) > 0 or summary["queue_size"] > 0
    assert summary["taken"] < 200 and len(simulator.calls) < 200


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('"max_requests"', "JSON object"),
        ('{"max_requests": 0}', "positive integer"),
        ('{"max_requests": -3}', "positive integer"),
        ('{"max_requests": "5"}', "positive integer"),
        ('{"max_requests": true}', "positive integer"),
        ('{"max_requests": 2.5}', "positive integer"),
        ('{"max_requests": 2, "seconds": 9}', "unknown field"),
    ],
)
def test_post_refresh_rejects_a_bad_body_with_400_and_drains_nothing(
    payload, message, invoke, settings, redis_client, database_url, simulator
):
    push(redis_client, settings, req(1))
    before = redis_state(redis_client)

    response = invoke(rest_event("POST", "/refresh", body=payload))

    assert response["statusCode"] == 400
    assert message in body(response)["error"]
    assert redis_state(redis_client) == before
    assert ledger(database_url) == [] and simulator.calls == []


def test_post_refresh_while_another_drain_holds_the_lease_is_200_lease_held(
    invoke, settings, redis_client, simulator
):
    redis_client.set(QueueKeys(settings.queue.refresh_queue_key).lease, "another-drain", px=30_000)
    push(redis_client, settings, req(1))
    before = queue_items(redis_client, settings)

    response = invoke(rest_event("POST", "/refresh"))

    assert response["statusCode"] == 200
    assert body(response)["stopped"] == "lease_held"
    assert queue_items(redis_client, settings) == before and simulator.calls == []
    assert redis_client.get(QueueKeys(settings.queue.refresh_queue_key).lease) == b"another-drain"


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/nope", 404, None),
        ("GET", "/", 404, None),
        ("POST", "/health/extra", 404, None),
        ("POST", "/health", 405, "GET"),
        ("DELETE", "/health", 405, "GET"),
        ("GET", "/refresh", 405, "POST"),
        ("PUT", "/refresh", 405, "POST"),
    ],
)
def test_unknown_routes_are_404_wrong_methods_405_and_neither_drains(
    method, path, status, allow, invoke, settings, redis_client, database_url, simulator
):
    push(redis_client, settings, req(1))
    before = redis_state(redis_client)

    response = invoke(rest_event(method, path, body='{"max_requests": 1}' if method != "GET" else None))

    assert response["statusCode"] == status
    assert "error" in body(response)
    assert header(response, "Allow") == allow
    assert redis_state(redis_client) == before
    assert ledger(database_url) == [] and simulator.calls == []


# -- other events ---------------------------------------------------------------------------------

SQS_EVENT = {
    "Records": [
        {
            "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
            "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a",
            "body": '{"kind": "player", "tag": "#2PP"}',
            "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1545082649183"},
            "messageAttributes": {},
            "md5OfBody": "098f6bcd4621d373cade4e832627b4f6",
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:my-queue",
            "awsRegion": "eu-west-1",
        }
    ]
}
EC2_STATE_CHANGE = {
    "version": "0",
    "id": "7bf73129-1428-4cd3-a780-95db273d1602",
    "detail-type": "EC2 Instance State-change Notification",
    "source": "aws.ec2",
    "account": "123456789012",
    "time": "2026-11-28T12:00:00Z",
    "region": "eu-west-1",
    "resources": ["arn:aws:ec2:eu-west-1:123456789012:instance/i-0123456789abcdef0"],
    "detail": {"instance-id": "i-0123456789abcdef0", "state": "running"},
}


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({}, "unrecognised event"),
        (None, "unrecognised event"),
        ([1, 2], "unrecognised event"),
        ({"hello": "world"}, "unrecognised event"),
        (SQS_EVENT, "unrecognised event"),
        (EC2_STATE_CHANGE, "unrecognised event"),
        (http_api_event("GET", "/health"), "payload 2.0"),
        (alb_event("GET", "/health"), "Application Load Balancer"),
        ({"action": "explode"}, "unknown action 'explode'"),
        ({"action": "drain", "max_requests": 0}, "positive integer"),
        ({"action": "drain", "seconds": 5}, "unknown field"),
    ],
)
def test_unknown_events_get_an_error_object_and_never_drain(
    event, message, invoke, settings, redis_client, database_url, simulator
):
    push(redis_client, settings, req(1))
    before = redis_state(redis_client)

    answer = invoke(event)

    # HTTP shapes other than REST (2.0, ALB) are answered in their own shape: a 400 with the error.
    said = orjson.loads(answer["body"])["error"] if "statusCode" in answer else answer["error"]
    assert message in said
    assert answer.get("statusCode", 400) == 400
    assert redis_state(redis_client) == before
    assert ledger(database_url) == [] and simulator.calls == []


def test_operator_actions_drain_health_and_migrate(invoke, settings, redis_client, capfd):
    push(redis_client, settings, req(1), req(2, tag="#2PQ"))

    health = invoke({"action": "health"})
    drained = invoke({"action": "drain", "max_requests": 1})
    migrated = invoke({"action": "migrate"})

    assert health["status"] == "healthy" and health["queue_size"] == 2
    assert drained["taken"] == 1 and drained["stopped"] == "max_requests"
    assert migrated == {"applied": []}  # the test database is already migrated
    [emf] = emf_lines(capfd.readouterr().out)
    assert emf["trigger"] == "operator"


# -- warm reuse ---------------------------------------------------------------------------------


def test_warm_invocations_reuse_settings_pool_api_client_and_loop(
    invoke, settings, redis_client, simulator, capfd
):
    push(redis_client, settings, req(1))
    invoke(scheduled_event())
    container = lambda_function._container
    worker = container.worker
    pool, api, loop, settings_seen = worker._db, worker._api, container.loop, worker.settings

    push(redis_client, settings, req(2, tag="#2PQ"))
    second = invoke(scheduled_event())
    connections = pool.pool.get_stats().get("connections_num", 0)
    logins = len(simulator.calls)
    empties = [invoke(scheduled_event()) for _ in range(5)]

    assert second["processed_requests"] == 1
    assert [empty["stopped"] for empty in empties] == ["queue_empty"] * 5
    assert lambda_function._container is container and container.worker is worker
    assert worker._db is pool and worker._api is api and container.loop is loop
    assert worker.settings is settings_seen
    # Warm means cheap (bench/lambda.md times it): no new Postgres connection, no API traffic.
    assert pool.pool.get_stats().get("connections_num", 0) == connections
    assert len(simulator.calls) == logins
    starts = [line["cold_start"] for line in json_lines(capfd.readouterr().out) if "cold_start" in line]
    assert starts[0] is True and starts[-1] is False


# -- configuration errors ---------------------------------------------------------------------------


def test_a_bad_setting_fails_the_invocation_with_one_message_naming_the_variable(
    invoke, worker_env, settings, redis_client, simulator, capfd
):
    invoke.env(worker_env, COC_REQS_PER_SEC="fast")
    push(redis_client, settings, req(1))

    for _ in range(2):  # a warm retry fails the same way: nothing half-built is kept
        with pytest.raises(ConfigError) as caught:
            invoke(scheduled_event())
        assert "COC_REQS_PER_SEC" in str(caught.value) and "fast" in str(caught.value)
        assert "\n" not in str(caught.value)
    logged = [line for line in json_lines(capfd.readouterr().out) if line.get("level") == "ERROR"]
    assert logged and all("COC_REQS_PER_SEC" in line["message"] for line in logged)
    assert logged[0]["variable"] == "COC_REQS_PER_SEC"
    assert len(queue_items(redis_client, settings)) == 1 and simulator.calls == []


def test_missing_credentials_fail_a_drain_but_not_health(invoke, worker_env, settings, redis_client):
    invoke.env(worker_env, COC_API_TOKENS=None)
    push(redis_client, settings, req(1))

    health = invoke(rest_event("GET", "/health"))
    with pytest.raises(ConfigError, match="COC_API_TOKENS"):
        invoke(scheduled_event())

    assert health["statusCode"] == 200
    assert len(queue_items(redis_client, settings)) == 1


def test_cli_drain_with_a_bad_setting_prints_one_line_and_no_traceback(worker_env):
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env.update(worker_env, COC_REQS_PER_SEC="fast", PYTHONPATH=str(ROOT))

    done = subprocess.run(
        [sys.executable, "-m", "worker", "drain"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "configuration error: COC_REQS_PER_SEC: expected a number of requests per second, got 'fast'"
    ]
    assert "Traceback" not in done.stdout + done.stderr
