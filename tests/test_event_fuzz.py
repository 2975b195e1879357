"""Every event gets a clean answer (issue 24, scenario 6; issue 23).

The handler is invoked as Lambda invokes it, against real Postgres, Redis and the simulator,
with arbitrary JSON and with the HTTP shapes it may meet (API Gateway REST 1.0, HTTP API 2.0,
ALB) whose fields are replaced by values of any JSON type, and base64 flags over bodies that are
not base64. Whatever comes in, the handler returns: an HTTP shape gets an HTTP status that is
never a 5xx but health's deliberate 503, and nothing raises.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coclib.testing.lambda_context import alb_event, http_api_event, rest_event, scheduled_event
from tests.test_handler import Invoker, cold_invoker

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
ROUTES = st.sampled_from([("GET", "/health"), ("POST", "/refresh"), ("GET", "/refresh"), ("PUT", "/x")])
# Events the worker acts on (a REST /refresh with no body drains an empty queue: cheap) and the
# HTTP shapes it refuses, each built the way AWS sends it.
SHAPES = {
    "rest": lambda method, path: rest_event(method, path, body="{}" if method == "POST" else None),
    "http_api": http_api_event,
    "alb": alb_event,
}

FUZZ = settings(
    max_examples=120,
    deadline=None,
    # The invoker is one cold container for the whole test: its environment never changes.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def invoke(monkeypatch: pytest.MonkeyPatch, worker_env: dict[str, str]) -> Iterator[Invoker]:
    yield from cold_invoker(monkeypatch, worker_env)


def assert_clean(event: Any, answer: Any) -> None:
    assert isinstance(answer, dict)
    if "statusCode" not in answer:
        return  # not an HTTP answer: a run summary, a health body, an error object
    status = answer["statusCode"]
    assert isinstance(status, int) and isinstance(answer.get("body"), str)
    orjson.loads(answer["body"])  # always JSON
    health = event.get("httpMethod") == "GET" and event.get("path") == "/health"
    assert status < 500 or (status == 503 and health), (status, answer["body"])


def _mutate(event: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """`event` with the field at `path` (a key of it, or of a map inside it) set to `value`."""
    target = event
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[path[-1]] = value
    return event


@st.composite
def mutated_http_events(draw) -> dict[str, Any]:
    shape = draw(st.sampled_from(sorted(SHAPES)))
    event = SHAPES[shape](*draw(ROUTES))
    # A top-level field, or one inside a nested map (requestContext, headers, …), or a new one.
    nested = sorted(k for k, v in event.items() if isinstance(v, dict))
    outer = draw(st.sampled_from(sorted(event)) | st.text(max_size=8))
    if draw(st.booleans()) and nested:
        inner_of = draw(st.sampled_from(nested))
        path = [inner_of, draw(st.sampled_from(sorted(event[inner_of]) or ["x"]) | st.text(max_size=8))]
    else:
        path = [outer]
    return _mutate(event, path, draw(JSON))


@st.composite
def bad_base64_bodies(draw) -> dict[str, Any]:
    method, path = draw(ROUTES)
    event = rest_event(method, path)
    body = draw(
        st.text(max_size=40)
        | st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode())  # valid base64, any bytes
        | st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()[:-1])  # truncated
    )
    event["body"], event["isBase64Encoded"] = body, True
    return event


@FUZZ
@given(event=JSON)
def test_arbitrary_json_gets_an_answer(invoke, event):
    if isinstance(event, dict) and event.get("action") == "migrate":
        event = {**event, "action": "health"}  # migrate is synchronous DDL: valid, but slow to fuzz
    assert_clean(event if isinstance(event, dict) else {}, invoke(event))


@FUZZ
@given(event=mutated_http_events())
def test_http_events_with_fields_of_any_type_get_an_answer(invoke, event):
    assert_clean(event, invoke(event))


@FUZZ
@given(event=bad_base64_bodies())
def test_base64_flags_over_any_body_get_an_answer(invoke, event):
    assert_clean(event, invoke(event))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("multiValueHeaders", "Accept: */*"),
        ("multiValueHeaders", ["a"]),
        ("body", 42),
        ("body", {"max_requests": 1}),
    ],
)
def test_the_probe_s_events_get_a_400(invoke, field, value):
    """The two crashes the issue's probe found: a `multiValueHeaders` that is no map, a `body`
    that is no string."""
    event = rest_event("POST", "/refresh", body="{}")
    event[field] = value
    answer = invoke(event)
    assert answer["statusCode"] == 400 and field in orjson.loads(answer["body"])["error"]


def test_scheduled_event_still_drains(invoke):
    assert invoke(scheduled_event())["stopped"] == "queue_empty"
