"""What a Lambda event asks for, and the answer to it.

| event | does | returns |
| --- | --- | --- |
| EventBridge scheduled event | drain until the queue is empty or the deadline (below) | run summary |
| API Gateway REST proxy (v1) | `worker.http`: `GET /health`, `POST /refresh`, else 404/405 | proxy response |
| `{"action": "drain"}`, optional `"max_requests"` | a drain like the scheduled one | run summary |
| `{"action": "health"}` | health | health body |
| `{"action": "migrate"}` | apply pending migrations | `{"applied": [...]}` |
| anything else (unknown action, HTTP API v2, ALB, SQS, `{}`) | nothing | `{"error": "…"}` |

A scheduled event has `source` `aws.events` and `detail-type` `Scheduled Event`; a REST proxy
event has a string `httpMethod` and `path` and a `requestContext` (without `elb`: an ALB event
looks alike but wants another answer shape).

Nothing but a scheduled event, `POST /refresh` and the drain action ever drains.
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
        return error(
            "API Gateway HTTP API (payload 2.0) and function URL events are not supported: "
            "use a REST API with a Lambda proxy integration"
        )
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
