"""AWS Lambda entry point: route the event, call the worker, shape the answer.

Everything long-lived (settings, pool, Redis client, API client with its keys, the
event loop they are bound to) is built on the first invocation and kept while the
container is warm.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from coclib.errors import ConfigError
from coclib.settings import Settings
from worker.events import route
from worker.logs import configure_logging
from worker.runtime import Worker

log = logging.getLogger(__name__)

_loop: asyncio.AbstractEventLoop | None = None
_worker: Worker | None = None


def _warm_worker() -> tuple[asyncio.AbstractEventLoop, Worker]:
    global _loop, _worker
    if _worker is None:
        settings = Settings.from_env()  # a ConfigError fails the invocation, naming the variable
        configure_logging(settings.log_level, settings.secrets(), static={"environment": settings.environment})
        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
        _worker = Worker(settings)
    assert _loop is not None
    return _loop, _worker


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Scheduled drains, API Gateway `GET /health` and `POST /refresh`, operator actions."""
    try:
        loop, worker = _warm_worker()
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        raise
    return loop.run_until_complete(route(worker, event, context))
