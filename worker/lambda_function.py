"""AWS Lambda entry point: route the event, call the worker, shape the answer.

Everything long-lived (settings, logging, the Postgres pool, the Redis client, the API
client with its keys, the metrics publisher and the event loop they are bound to) is built
on the first invocation and kept while the container is warm: a warm invocation only runs
its own work on the same loop. Routing lives in `worker.events` and `worker.http`.

Secret settings given by reference (`DATABASE_URL_SECRET_ARN`, `COC_PASSWORD_PARAMETER`, ...)
are read from Secrets Manager or SSM at that first invocation, once per container
(`coclib.aws_secrets`); a rotated secret reaches the function with its next cold start.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
from dataclasses import dataclass
from typing import Any

from coclib.aws_secrets import resolve_references
from coclib.errors import ConfigError
from coclib.settings import Settings
from worker.actions import Actions
from worker.events import route
from worker.logs import RedactingFormatter, Redactor, configure_logging, lambda_context_keys
from worker.metrics import RunMetrics
from worker.runtime import Worker

log = logging.getLogger(__name__)


@dataclass
class _Container:
    """What one warm Lambda container keeps between invocations."""

    loop: asyncio.AbstractEventLoop
    worker: Worker
    actions: Actions
    formatter: RedactingFormatter
    redactor: Redactor
    invocations: int = 0


_container: _Container | None = None


def _warm() -> _Container:
    global _container
    if _container is None:
        try:
            settings = Settings.from_env(resolve=resolve_references)
        except ConfigError as exc:
            # No settings, so no secrets to know: the message names a variable, never a value
            # of a secret one. The invocation then fails with it (the Errors alarm sees it).
            configure_logging("INFO", ())
            log.error("configuration error: %s", exc, extra={"variable": exc.variable})
            raise
        formatter = configure_logging(
            settings.log_level, settings.secrets(), static={"environment": settings.environment}
        )
        references = Settings.references()
        if references:
            # Where each secret came from (names and ARNs only), for whoever debugs a cold start.
            sources = {r.setting: r.name for r in references}
            log.info("secrets read by reference", extra={"references": sources})
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        worker = Worker(settings)
        redactor = formatter.redactor
        metrics = RunMetrics(settings.environment, redact=redactor.text)
        _container = _Container(loop, worker, Actions(worker, metrics), formatter, redactor)
        # A process that ran the handler and then exits (a script, the local server, tests)
        # closes the pool and the API session first: otherwise asyncio and aiohttp log
        # "Task was destroyed but it is pending" and "Unclosed client session" at exit.
        # (Lambda itself freezes or kills the container; no hook runs there, none is needed.)
        atexit.register(shutdown)
    return _container


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Scheduled drains, API Gateway `GET /health` and `POST /refresh`, operator actions."""
    container = _warm()
    container.formatter.append_keys(cold_start=container.invocations == 0, **lambda_context_keys(context))
    container.invocations += 1
    try:
        result = container.loop.run_until_complete(route(container.actions, event, context))
    except Exception:
        # Re-raised, so the invocation fails (and the Errors alarm counts it); logged first so
        # the traceback is a redacted JSON line like every other.
        log.exception("invocation failed")
        raise
    # Answers are built from error texts too: the same redaction as the logs, to be sure.
    return container.redactor.value(result)


def shutdown() -> None:
    """Close what the warm container holds (the local server's exit; tests' cold starts)."""
    global _container
    container, _container = _container, None
    if container is None:
        return
    atexit.unregister(shutdown)
    loop = container.loop
    try:
        loop.run_until_complete(container.worker.close())
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=5))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
