"""The command line: drain, migrate, enqueue, the local demo, the local server."""

from __future__ import annotations

import argparse
import asyncio
import sys

import orjson
import redis

from coclib.errors import CocLibError, ConfigError
from coclib.keys import QueueKeys
from coclib.queue import KINDS, enqueue
from coclib.redis_client import describe_error, sync_client
from coclib.settings import Settings
from worker.logs import configure_logging
from worker.runtime import Worker


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    drain = sub.add_parser("drain", help="drain the queue once, as the scheduled Lambda does")
    drain.add_argument("--seconds", type=float, default=295.0, help="stop taking work after this long")
    sub.add_parser("migrate", help="apply pending SQL migrations")
    enq = sub.add_parser("enqueue", help="queue refresh requests")
    enq.add_argument("kind", choices=KINDS)
    enq.add_argument("tags", nargs="+")
    demo = sub.add_parser("demo", help="the local run: embedded Postgres, Redis and API simulator")
    demo.add_argument("--requests", type=int, default=240, help="how many requests to enqueue")
    serve = sub.add_parser("serve", help="serve the Lambda handler over HTTP, like API Gateway")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--schedule", type=float, default=0, help="fire the scheduled event every N seconds")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    settings: Settings | None = None
    try:
        if args.command == "demo":
            from worker.demo import run_demo  # needs the `local` extra, never shipped to Lambda

            return run_demo(requests=args.requests)
        if args.command == "serve":
            from worker.serve import serve

            return serve(args.host, args.port, schedule_seconds=args.schedule)
        settings = Settings.from_env()
        configure_logging(
            settings.log_level, settings.secrets(), static={"environment": settings.environment}
        )
        if args.command == "migrate":
            applied = Worker(settings).migrate()
            print(f"applied: {', '.join(applied)}" if applied else "up to date")
        elif args.command == "enqueue":
            return _enqueue(settings, args.kind, args.tags)
        elif args.command == "drain":
            summary = asyncio.run(_drain(settings, args.seconds))
            sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except CocLibError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:  # Redis down or refusing: one line, its password masked
        text = describe_error(exc, settings) if settings else f"Redis: {type(exc).__name__}: {exc}"
        print(f"error: {text}", file=sys.stderr)
        return 1


def _enqueue(settings: Settings, kind: str, tags: list[str]) -> int:
    keys = QueueKeys(settings.refresh_queue_key)
    with sync_client(settings) as client:  # a single node or a cluster, whichever REDIS_URL names
        for tag in tags:
            request_id = enqueue(client, kind, tag, keys=keys)
            print(f"{kind} {tag}: {request_id or 'already queued'}")
    return 0


async def _drain(settings: Settings, seconds: float) -> dict:
    worker = Worker(settings)
    try:
        return (await worker.drain(seconds)).as_dict()
    finally:
        await worker.close()
