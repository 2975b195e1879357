"""What a Lambda event asks for, and the answer to it.

| event | does | returns |
| --- | --- | --- |
| EventBridge scheduled event | drain until the queue is empty or the deadline (below) | run summary |
| API Gateway REST proxy (v1) | `worker.http`: `GET /health`, `POST /refresh`, else 404/405 | proxy response |
| `{"action": "drain"}`, optional `"max_requests"` | a drain like the scheduled one | run summary |
| `{"action": "health"}` | health | health body |
| `{"action": "migrate"}` | apply pending migrations | `{"applied": [...]}` |
| HTTP API (payload 2.0), function URL, ALB | nothing | 400 in the event's answer shape, error body |
| anything else (unknown action, SQS, `{}`) | nothing | `{"error": "…"}` |

A scheduled event has `source` `aws.events` and `detail-type` `Scheduled Event`; a REST proxy
event has a string `httpMethod` and `path` and a `requestContext` (without `elb`: an ALB event
looks alike but wants another answer shape).

Nothing but a scheduled event, `POST /refresh` and the drain action ever drains. Every event,
whatever its shape or the types of its fields, gets an answer: an HTTP caller an HTTP status
(never a 5xx but health's 503), anything else an error object (tests/test_event_fuzz.py).
"""

from __future__ import annotations

from typing import Any

from worker import http
from worker.actions import OPERATOR, SCHEDULED, Actions, InvalidInput, parse_max_requests

# Lambda's last seconds are kept for the runtime's own work: a drain's deadline is this long
# before the timeout, and it takes no new work from `DrainPolicy.finish_reserve` (1 s) before
# that, so new work stops 6 s before the timeout.
DEADLINE_BUFFER_SECONDS = 5.0
# With no Lambda context (operators, tests), a drain is bounded like a scheduled one.
DEFAULT_RUN_SECONDS = 295.0
ACTIONS = ("drain", "health", "migrate")


def remaining_seconds(context: Any, default: float = DEFAULT_RUN_SECONDS + DEADLINE_BUFFER_SECONDS) -> float:
    """Seconds left before Lambda stops us, less the buffer."""
    getter = getattr(context, "get_remaining_time_in_millis", None)
    remaining = getter() / 1000 if callable(getter) else default
    return max(0.0, remaining - DEADLINE_BUFFER_SECONDS)


def is_scheduled(event: Any) -> bool:
    """An EventBridge (CloudWatch Events) scheduled event."""
    return (
        isinstance(event, dict)
        and event.get("source") == "aws.events"
        and (event.get("detail-type") == "Scheduled Event")
    )


def is_rest_proxy(event: Any) -> bool:
    """An API Gateway REST API proxy-integration event (payload format 1.0)."""
    if not isinstance(event, dict) or event.get("version") == "2.0":
        return False
    context = event.get("requestContext")
    return (
        isinstance(event.get("httpMethod"), str)
        and isinstance(event.get("path"), str)
        and isinstance(context, dict)
        and "elb" not in context  # an ALB event looks alike but wants another answer shape
    )


def is_alb(event: Any) -> bool:
    """An Application Load Balancer target group event."""
    context = event.get("requestContext") if isinstance(event, dict) else None
    return isinstance(context, dict) and "elb" in context


def error(message: str, **extra: Any) -> dict[str, Any]:
    return {"error": message, **extra}


async def route(actions: Actions, event: Any, context: Any) -> dict[str, Any]:
    """Dispatch one event. Unknown events get an error object, never a drain."""
    if is_scheduled(event):
        return await actions.drain(remaining_seconds(context), trigger=SCHEDULED)
    if is_rest_proxy(event):
        return await http.handle(actions, event, context, remaining_seconds=remaining_seconds(context))
    if isinstance(event, dict) and "action" in event:
        return await _action(actions, event, context)
    if isinstance(event, dict) and (event.get("version") == "2.0" or "routeKey" in event):
        # Answered in the 2.0 shape: HTTP API would show a bare object as a 200.
        message = (
            "API Gateway HTTP API (payload 2.0) and function URL events are not supported: "
            "use a REST API with a Lambda proxy integration"
        )
        return {
            "statusCode": 400,
            "headers": {"Content-Type": "application/json", "Cache-Control": "no-store"},
            "body": http.dumps(error(message)),
        }
    if is_alb(event):
        # Answered in the ALB's shape: it turns anything else into a 502.
        message = (
            "Application Load Balancer events are not supported: "
            "use a REST API with a Lambda proxy integration"
        )
        return {
            "statusCode": 400,
            "statusDescription": "400 Bad Request",
            "headers": {"Content-Type": "application/json", "Cache-Control": "no-store"},
            "body": http.dumps(error(message)),
            "isBase64Encoded": False,
        }
    return error(
        "unrecognised event: expected an EventBridge scheduled event, an API Gateway REST "
        "proxy event or {'action': …}",
        actions=list(ACTIONS),
    )


async def _action(actions: Actions, event: dict[str, Any], context: Any) -> dict[str, Any]:
    action = event["action"]
    if action == "drain":
        unknown = sorted(set(event) - {"action", "max_requests"})
        if unknown:
            return error(f"unknown field(s) {', '.join(map(repr, unknown))} for the drain action")
        try:
            max_requests = parse_max_requests(event.get("max_requests"))
        except InvalidInput as exc:
            return error(str(exc))
        return await actions.drain(remaining_seconds(context), trigger=OPERATOR, max_requests=max_requests)
    if action == "health":
        report = await actions.health()
        return report.body
    if action == "migrate":
        return {"applied": await actions.migrate()}
    return error(f"unknown action {action!r}", actions=list(ACTIONS))
