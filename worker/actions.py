"""What an invocation can do (drain, health, migrate), bound to the warm worker and metrics.

The event router (`worker.events`) and the HTTP routes (`worker.http`) both call these, so
a scheduled drain, `POST /refresh` and `{"action": "drain"}` log and measure a run alike.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from coclib.errors import CocLibError
from worker.drain import StopCode
from worker.health import HealthReport
from worker.metrics import RunMetrics
from worker.runtime import Worker

log = logging.getLogger(__name__)

# Why a drain was started, as the metrics and the summary log line say it.
SCHEDULED = "scheduled"
HTTP = "http"
OPERATOR = "operator"


class InvalidInput(ValueError):
    """A request's parameters are unusable; the message says which and why."""


class RunFailed(CocLibError):
    """A run stopped on an internal error: it recorded what it could and put the rest back, and
    the invocation fails so that the Errors alarm counts it."""

    def __init__(self, summary: dict[str, Any]) -> None:
        self.summary = summary
        super().__init__(f"run {summary['run_id']} stopped with an internal error: {summary['detail']}")


def parse_max_requests(value: Any) -> int | None:
    """`max_requests` as given by a caller: absent (None) or a positive integer."""
    if value is None:
        return None
    # bool is an int to Python, never to a caller who wrote `true`.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"'max_requests' must be a positive integer, got {value!r}")
    return value


@dataclass
class Actions:
    """The operations of one warm container."""

    worker: Worker
    metrics: RunMetrics

    async def drain(self, seconds: float, *, trigger: str, max_requests: int | None = None) -> dict[str, Any]:
        """One run that returns within `seconds`; its summary, logged and measured."""
        policy = None
        if max_requests is not None:
            policy = dataclasses.replace(self.worker.policy, max_requests=max_requests)
        report = await self.worker.run(seconds, policy=policy, scheduled=trigger == SCHEDULED)
        summary = report.as_dict()  # the run summary, its retention and the ledger's size
        log.info("run finished", extra={"summary": summary, "trigger": trigger})
        self.metrics.publish(summary, trigger=trigger)
        if report.summary.stopped is StopCode.INTERNAL_ERROR:
            raise RunFailed(summary) from report.summary.error
        return summary

    async def health(self) -> HealthReport:
        """Health within the probe budget; never raises for a dependency's fault."""
        return await self.worker.health()

    async def migrate(self) -> list[str]:
        """Apply pending migrations (synchronous psycopg: run off the event loop)."""
        return await asyncio.to_thread(self.worker.migrate)
