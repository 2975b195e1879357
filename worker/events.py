"""What a Lambda event asks for, and the answer to it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from worker.runtime import Worker

log = logging.getLogger(__name__)

# Lambda's last seconds are kept for the final writes and the runtime's own work.
DEADLINE_BUFFER_SECONDS = 5.0
# With no Lambda context (operators, tests), a drain is bounded like a scheduled one.
DEFAULT_RUN_SECONDS = 295.0


def remaining_seconds(context: Any, default: float = DEFAULT_RUN_SECONDS + DEADLINE_BUFFER_SECONDS) -> float:
    """Seconds left before Lambda stops us, less the buffer."""
    getter = getattr(context, "get_remaining_time_in_millis", None)
    remaining = getter() / 1000 if callable(getter) else default
    return max(0.0, remaining - DEADLINE_BUFFER_SECONDS)


def is_scheduled(event: Any) -> bool:
    return isinstance(event, dict) and (
        event.get("source") == "aws.events" or event.get("detail-type") == "Scheduled Event"
    )


async def route(worker: Worker, event: Any, context: Any) -> dict[str, Any]:
    """Dispatch one event. Unknown events get an error object, never a drain."""
    if is_scheduled(event):
        summary = await worker.drain(remaining_seconds(context))
        log.info("run finished", extra={"summary": summary.as_dict()})
        return summary.as_dict()
    if isinstance(event, dict) and "action" in event:
        action = event["action"]
        if action == "drain":
            summary = await worker.drain(remaining_seconds(context))
            log.info("run finished", extra={"summary": summary.as_dict()})
            return summary.as_dict()
        if action == "migrate":
            applied = await asyncio.to_thread(worker.migrate)
            return {"applied": applied}
        return {"error": f"unknown action {action!r}", "actions": ["drain", "health", "migrate"]}
    return {"error": "unrecognised event: expected a scheduled event, an API Gateway request or {'action': …}"}
