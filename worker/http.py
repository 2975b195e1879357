"""API Gateway REST API (proxy integration, payload v1) routes, on Powertools' resolver.

| method and path | answer |
| --- | --- |
| `GET /health` | 200 healthy or degraded, 503 unhealthy; the health body |
| `POST /refresh` | 200 and the run summary of a drain bounded to fit API Gateway's 29 s |
| a known path, another method | 405 with `Allow` |
| any other path | 404 |

`POST /refresh` takes an optional JSON body `{"max_requests": N}` (N a positive integer);
anything else in the body is a 400 and nothing is drained. A run that finds another drain
holding the lease answers 200 with `"stopped": "lease_held"`: the request was understood and
the queue is being drained (by the other run), which is what the caller wanted. A run that
meets a dead Postgres or API answers 200 too, with `"stopped": "circuit_open"` and the
`cause`: the summary is the answer, and GET /health is where outages turn into 503.
Errors are `{"error": "…"}`.

An event of the REST proxy shape whose fields have impossible types (a `multiValueHeaders`
that is not an object of lists of strings, a `body` that is not a string, …) is answered 400
before routing: API Gateway never sends one, but whatever invokes the function gets an answer,
not a traceback from deep inside the resolver.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError

from worker.actions import HTTP, Actions, InvalidInput, parse_max_requests

# API Gateway gives up on the integration after 29 s. The drain must have answered by then,
# including a cold start (~0.5 s here, more on Lambda), the API login and the final writes:
# 24 s of drain leaves 5 for them.
REFRESH_BUDGET_SECONDS = 24.0
ROUTES: dict[str, tuple[str, ...]] = {"/health": ("GET",), "/refresh": ("POST",)}
REFRESH_FIELDS = ("max_requests",)


def dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


app = APIGatewayRestResolver(debug=False, serializer=dumps)


class HttpError(Exception):
    """An answer other than success: status, message and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    # Health and run summaries are point-in-time answers: nothing in between may cache them.
    return Response(
        status_code=status,
        content_type="application/json",
        body=dumps(body),
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def refresh_seconds(remaining_after_buffer: float) -> float:
    """The drain's budget for POST /refresh: Lambda's remaining time (less its buffer), at most 24 s."""
    return max(0.0, min(remaining_after_buffer, REFRESH_BUDGET_SECONDS))


def parse_refresh_body(body: str | None, *, base64_encoded: bool = False) -> int | None:
    """`max_requests` from POST /refresh's body; `HttpError(400)` when the body is unusable."""
    if base64_encoded and body:
        try:
            body = base64.b64decode(body, validate=True).decode("utf-8")
        except ValueError:  # not base64 (binascii.Error), not ASCII, not UTF-8 (UnicodeDecodeError)
            raise HttpError(400, "the body is not valid base64-encoded UTF-8") from None
    if body is None or not body.strip():
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, f"the body is not JSON: {exc}") from None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise HttpError(
            400, f'the body must be a JSON object like {{"max_requests": 50}}, got a {type(data).__name__}'
        )
    unknown = sorted(set(data) - set(REFRESH_FIELDS))
    if unknown:
        raise HttpError(
            400, f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(REFRESH_FIELDS)}"
        )
    try:
        return parse_max_requests(data.get("max_requests"))
    except InvalidInput as exc:
        raise HttpError(400, str(exc)) from None


# The REST proxy event's fields that the resolver reads, and the JSON types each may have
# (null for all of them: API Gateway sends null for an empty map or body).
_STRING_MAPS = ("headers", "queryStringParameters", "pathParameters", "stageVariables")
_LIST_MAPS = ("multiValueHeaders", "multiValueQueryStringParameters")


def event_problem(event: dict[str, Any]) -> str | None:
    """What makes a REST-proxy-shaped event impossible to answer as a request, or None."""
    for name in _STRING_MAPS:
        value = event.get(name)
        if value is not None and not (
            isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        ):
            return f"{name!r} must be null or an object of strings"
    for name in _LIST_MAPS:
        value = event.get(name)
        if value is not None and not (
            isinstance(value, dict)
            and all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in value.values())
        ):
            return f"{name!r} must be null or an object of lists of strings"
    if not isinstance(event.get("body"), str | None):
        return "'body' must be null or a string"
    if not isinstance(event.get("isBase64Encoded"), bool | None):
        return "'isBase64Encoded' must be null or a boolean"
    return None


def proxy_answer(status: int, body: Any) -> dict[str, Any]:
    """A proxy response built without the resolver, shaped as the resolver shapes its own."""
    headers = {"Content-Type": ["application/json"], "Cache-Control": ["no-store"]}
    return {
        "statusCode": status,
        "multiValueHeaders": headers,
        "body": dumps(body),
        "isBase64Encoded": False,
    }


def _actions() -> Actions:
    return app.context["actions"]


@app.get("/health")
async def health() -> Response:
    report = await _actions().health()
    return json_response(report.http_status, report.body)


@app.post("/refresh")
async def refresh() -> Response:
    event = app.current_event
    max_requests = parse_refresh_body(event.body, base64_encoded=event.is_base64_encoded)
    seconds = refresh_seconds(app.context["remaining_seconds"])
    summary = await _actions().drain(seconds, trigger=HTTP, max_requests=max_requests)
    return json_response(200, summary)


@app.exception_handler(HttpError)
def _http_error(exc: HttpError) -> Response:
    return json_response(exc.status, {"error": exc.message}, exc.headers)


@app.not_found
def _not_found(_: NotFoundError) -> Response:
    event = app.current_event
    method, path = event.http_method.upper(), event.path
    allowed = ROUTES.get(path)
    if allowed:
        return json_response(
            405,
            {"error": f"{method} is not allowed on {path}; use {' or '.join(allowed)}"},
            {"Allow": ", ".join(allowed)},
        )
    routes = [f"{m} {p}" for p, methods in ROUTES.items() for m in methods]
    return json_response(404, {"error": f"no route for {method} {path}", "routes": routes})


async def handle(
    actions: Actions, event: dict[str, Any], context: Any, *, remaining_seconds: float
) -> dict[str, Any]:
    """Answer one API Gateway REST proxy event: the proxy response dict."""
    problem = event_problem(event)
    if problem is not None:
        return proxy_answer(400, {"error": f"malformed API Gateway REST proxy event: {problem}"})
    app.append_context(actions=actions, remaining_seconds=remaining_seconds)
    return await app.resolve_async(event, context)
