"""The local twin: real HTTP requests become API Gateway REST proxy events for the same handler."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEvent

from coclib.queue import RefreshRequest
from coclib.testing.lambda_context import rest_event
from tests.helpers import push, queue_items
from tests.test_cli import unclean_lines
from tests.test_handler import SETTING_NAMES, cold_invoker
from worker.serve import LocalGateway

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def invoke(monkeypatch, worker_env):
    yield from cold_invoker(monkeypatch, worker_env)


def http(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None):
    """(status, headers, parsed JSON body) of one real HTTP request."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"null")


class Recorder:
    """A stand-in handler that records what it was given and answers a fixed proxy response."""

    def __init__(self, answer: dict[str, Any] | None = None, error: Exception | None = None) -> None:
        self.calls: list[tuple[dict[str, Any], Any]] = []
        self.answer = answer or {
            "statusCode": 201,
            "multiValueHeaders": {"Content-Type": ["application/json"], "X-Thing": ["a", "b"]},
            "body": '{"ok": true}',
            "isBase64Encoded": False,
        }
        self.error = error
        self.lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        with self.lock:
            self.calls.append((event, context))
        if self.error:
            raise self.error
        return self.answer


def test_a_request_becomes_a_rest_proxy_event_and_the_answer_a_response():
    recorder = Recorder()
    with LocalGateway(port=0, handler=recorder) as gateway:
        status, headers, answer = http(
            f"{gateway.url}/refresh?verbose=1&tag=a&tag=b",
            "POST",
            b'{"max_requests": 3}',
            {"Content-Type": "application/json", "X-Api-Key": "k-123"},
        )

    assert status == 201 and answer == {"ok": True}
    assert headers["X-Thing"] in ("a, b", "a")  # both values sent; urllib joins repeated headers
    [(event, context)] = recorder.calls
    # The same top-level shape as an event API Gateway sends (and as the test samples have).
    assert set(event) == set(rest_event("POST", "/refresh"))
    assert set(event["requestContext"]) == set(rest_event("POST", "/refresh")["requestContext"])
    parsed = APIGatewayProxyEvent(event)  # Powertools reads it as a REST proxy event
    assert parsed.http_method == "POST" and parsed.path == "/refresh" and event["resource"] == "/refresh"
    assert parsed.json_body == {"max_requests": 3} and not parsed.is_base64_encoded
    assert parsed.query_string_parameters == {"verbose": "1", "tag": "b"}
    assert event["multiValueQueryStringParameters"] == {"verbose": ["1"], "tag": ["a", "b"]}
    assert parsed.headers["X-Api-Key"] == "k-123"
    assert event["requestContext"]["identity"]["sourceIp"] == "127.0.0.1"
    assert event["requestContext"]["identity"]["apiKey"] == "k-123"
    assert event["requestContext"]["stage"] == "local" and event["requestContext"]["path"] == "/local/refresh"
    # A context like Lambda's: a request id, and time left counting down from the timeout.
    assert context.aws_request_id and context.function_name
    assert 299_000 < context.get_remaining_time_in_millis() <= 300_000


def test_a_binary_body_is_base64_encoded_and_an_empty_one_is_null():
    recorder = Recorder()
    with LocalGateway(port=0, handler=recorder) as gateway:
        http(f"{gateway.url}/refresh", "POST", b"\xff\x00\xfe", {"Content-Type": "application/octet-stream"})
        http(f"{gateway.url}/health")

    (binary, _), (empty, _) = recorder.calls
    assert binary["isBase64Encoded"] is True and binary["body"] == "/wD+"
    assert empty["body"] is None and empty["httpMethod"] == "GET"


def test_a_raising_handler_is_502_as_from_api_gateway():
    with LocalGateway(port=0, handler=Recorder(error=RuntimeError("boom"))) as gateway:
        status, _, answer = http(f"{gateway.url}/health")

    assert status == 502 and answer == {"message": "Internal server error"}


def test_a_non_proxy_answer_is_502():
    with LocalGateway(port=0, handler=Recorder(answer={"error": "unrecognised event"})) as gateway:
        status, _, answer = http(f"{gateway.url}/health")

    assert status == 502 and answer == {"message": "Internal server error"}


def test_the_schedule_fires_real_scheduled_events_one_invocation_at_a_time():
    recorder = Recorder(answer={"stopped": "queue_empty"})
    with LocalGateway(port=0, handler=recorder, schedule_seconds=0.1):
        deadline = time.monotonic() + 60  # a bound on a broken scheduler, not a timing
        while len(recorder.calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)

    assert len(recorder.calls) >= 3
    for event, context in recorder.calls:
        assert event["source"] == "aws.events" and event["detail-type"] == "Scheduled Event"
        assert event["resources"][0].startswith("arn:aws:events:")
        assert context.get_remaining_time_in_millis() > 0
    assert len({event["id"] for event, _ in recorder.calls}) == len(recorder.calls)


def test_the_real_handler_behind_the_local_gateway(invoke, settings, redis_client):
    push(redis_client, settings, *[RefreshRequest(str(i), "player", "#2PP", time.time()) for i in range(3)])
    with LocalGateway(port=0) as gateway:
        health = http(f"{gateway.url}/health")
        refreshed = http(f"{gateway.url}/refresh", "POST", b'{"max_requests": 2}')
        bad = http(f"{gateway.url}/refresh", "POST", b'{"max_requests": "two"}')
        wrong = http(f"{gateway.url}/health", "POST")
        missing = http(f"{gateway.url}/nope")

    assert health[0] == 200 and health[2]["status"] == "healthy" and health[2]["queue_size"] == 3
    assert health[1]["Cache-Control"] == "no-store"
    assert refreshed[0] == 200 and refreshed[2]["processed_requests"] == 2
    assert bad[0] == 400 and "positive integer" in bad[2]["error"]
    assert wrong[0] == 405 and wrong[1]["Allow"] == "GET"
    assert missing[0] == 404
    assert len(queue_items(redis_client, settings)) == 1


def _env(worker_env: dict[str, str], **changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    env.update(worker_env, PYTHONPATH=str(ROOT), **changes)
    return env


def stopped(server: subprocess.Popen) -> tuple[str, str]:
    """The output of a server told to stop; killed if it has not stopped in 60 s (a bound on a
    hang, not a timing), so a server that ignores its signal cannot live on into the next test."""
    try:
        return server.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.communicate()
        raise


def test_python_m_worker_serve_answers_curl_and_drains_on_schedule(worker_env, settings, redis_client):
    push(redis_client, settings, RefreshRequest("scheduled", "player", "#2PP", time.time()))
    server = subprocess.Popen(
        [sys.executable, "-m", "worker", "serve", "--port", "0", "--schedule", "0.5"],
        env=_env(worker_env), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = server.stdout.readline()
        assert first.startswith("serving the Lambda handler at http://127.0.0.1:"), first
        url = first.split(" at ")[1].split(" ")[0]
        status, _, health = http(f"{url}/health")
        assert status == 200 and health["status"] in ("healthy", "degraded")
        curl = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/health"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        if curl.returncode == 0:  # curl is optional on a developer machine
            assert curl.stdout == "200"
        deadline = time.monotonic() + 60  # a bound on a broken schedule, not a timing
        while queue_items(redis_client, settings) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert queue_items(redis_client, settings) == []  # the scheduled event drained it
    finally:
        server.send_signal(signal.SIGINT)
        _out, err = stopped(server)
    assert server.returncode == 0, err
    assert "Traceback" not in err


def test_python_m_worker_serve_with_a_bad_setting_prints_one_line(worker_env):
    done = subprocess.run(
        [sys.executable, "-m", "worker", "serve", "--port", "0"],
        env=_env(worker_env, COC_REQS_PER_SEC="fast"), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "configuration error: COC_REQS_PER_SEC: expected a number of requests per second, got 'fast'"
    ]


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_python_m_worker_serve_stops_cleanly(signal_name, worker_env, settings, redis_client):
    push(redis_client, settings, RefreshRequest("served", "player", "#2PP", time.time()))
    server = subprocess.Popen(
        [sys.executable, "-m", "worker", "serve", "--port", "0"],
        env=_env(worker_env), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = server.stdout.readline().split(" at ")[1].split(" ")[0]
    assert http(f"{url}/health")[0] == 200
    status, _, summary = http(f"{url}/refresh", "POST", b"{}")  # the pool and the API session open
    assert (status, summary["counts"].get("fetched")) == (200, 1)
    server.send_signal(getattr(signal, signal_name))
    out, err = stopped(server)

    # Closed on the way out: no "Unclosed client session", "Task was destroyed …" in any log line.
    assert server.returncode == 0
    assert unclean_lines(out, err) == []
