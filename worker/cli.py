"""The command line: drain, migrate, enqueue, wait, the local demo, the local server.

Each command reads only the environment variables it uses, listed in its `--help`. An error
is one line on stderr, never a traceback, with every secret the command knows blanked.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import psycopg
import redis

from coclib.completions import RefreshWaiter
from coclib.errors import CocLibError, ConfigError, InvalidTagError
from coclib.errortext import describe, first_line
from coclib.keys import QueueKeys
from coclib.migrations import migrate
from coclib.queue import KINDS, enqueue
from coclib.redis_client import ClusterUnavailable, sync_client
from coclib.settings import VARIABLES, DatabaseSettings, QueueSettings, Settings, mask_url_password
from coclib.tags import parse_tag
from worker.drain import StopCode
from worker.events import DEFAULT_RUN_SECONDS
from worker.logs import Redactor, configure_logging
from worker.runtime import Worker

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES = f"""exit codes:
  {EXIT_OK}    done (for drain: the run summary is printed, whatever stopped the run but a bug)
  {EXIT_FAILED}    failed: Postgres or Redis could not be reached or refused, or an unexpected error
       (for drain: the run stopped with internal_error; its summary is printed all the same)
  {EXIT_USAGE}    a bad argument, a missing or bad environment variable, or the demo refused a target
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)"""

_DEMO_ENVIRONMENT = """environment (all optional):
  DATABASE_URL      unset: an embedded Postgres in .local/; set: needs --scratch-database
  REDIS_URL         unset: an embedded Redis in .local/; set: needs --scratch-queue
  COC_API_TOKENS, COC_EMAIL, COC_PASSWORD
                    unset: the CoC API simulator (100-300 ms latency); set: the real API
  COC_API_BASE_URL  with credentials: the API's address (default https://api.clashofclans.com/v1)
  COC_REQS_PER_SEC  default 30 for the demo
  LOG_LEVEL         default WARNING for the demo"""


class UsageError(Exception):
    """A bad command-line argument that argparse cannot judge (a tag, a demo target)."""


def environment_help(names: Iterable[str]) -> str:
    """The `environment:` block of a command's --help: each variable it reads, with its default."""
    names = list(names)
    width = max(len(name) for name in names)
    return "environment:\n" + "\n".join(f"  {name.ljust(width)}  {VARIABLES[name].help}" for name in names)


Command = Callable[[argparse.Namespace, list[str]], int]


def _command(sub: Any, name: str, run: Command, summary: str, description: str, environment: str) -> Any:
    """A subcommand whose --help ends with the variables it reads and the exit codes."""
    parser = sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"{environment}\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m worker",
        description=__doc__,
        epilog="Each command's --help lists the environment variables it reads.\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    drain = _command(
        sub, "drain", _drain,
        "drain the queue once, as the scheduled Lambda does; print the run summary",
        "Drain the queue once, as the scheduled Lambda does, and print the run summary.",
        environment_help(Settings.variables()),
    )  # fmt: skip
    drain.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_RUN_SECONDS,
        help="stop taking work after this long (default %(default)g)",
    )

    _command(
        sub, "migrate", _migrate,
        "apply pending SQL migrations",
        "Apply pending sql/migrations/NNNN_*.sql (safe to run from several processes at once).",
        environment_help(DatabaseSettings.variables()),
    )  # fmt: skip

    enq = _command(
        sub, "enqueue", _enqueue,
        "queue refresh requests",
        "Queue refresh requests, as a producer does (a tag already waiting is not queued twice).",
        environment_help(QueueSettings.variables()),
    )  # fmt: skip
    enq.add_argument("kind", choices=KINDS)
    enq.add_argument("tags", nargs="+", metavar="TAG", help="e.g. '#2PP' (checked before any is queued)")
    enq.add_argument(
        "--priority",
        action="store_true",
        help="queue them in the priority lane (someone is waiting): taken before the queue",
    )

    wait = _command(
        sub, "wait", _wait,
        "wait until requests are settled (LISTEN refresh_done)",
        "Wait until each tag (or request id) is settled: fetched or failed. Prints one line per\n"
        "settled request as the worker's NOTIFY refresh_done tells it, and exits 1 if the timeout\n"
        "passes first. A tag waits for its next settlement after this command starts; an id is\n"
        "also looked up in the ledger, so one settled already is found at once. It needs a\n"
        "session-level connection: not through a transaction-pooling proxy (PgBouncer in\n"
        "transaction mode), where LISTEN hears nothing.",
        environment_help(DatabaseSettings.variables()),
    )  # fmt: skip
    wait.add_argument("tags", nargs="*", metavar="TAG", help="e.g. '#2PP' (normalised as the queue does)")
    wait.add_argument("--kind", choices=KINDS, help="only this kind's settlements of the tags (default: any)")
    wait.add_argument("--id", dest="ids", action="append", default=[], metavar="ID", help="a request id")
    wait.add_argument("--timeout", type=float, default=60.0, help="seconds (default %(default)g)")

    demo = _command(
        sub, "demo", _demo,
        "the local run: embedded Postgres and Redis, the API simulator",
        "The whole flow on this machine: enqueue a realistic mix (bad items included), drain it,\n"
        "print the outcomes and the failure audit. It runs on embedded services; pointed at\n"
        "a real Postgres or Redis it runs only on a database and queue named on the command line.",
        _DEMO_ENVIRONMENT,
    )  # fmt: skip
    demo.add_argument("--requests", type=int, default=240, help="how many requests to enqueue (default 240)")
    demo.add_argument(
        "--scratch-database",
        metavar="NAME",
        help="with DATABASE_URL set: the name of its database, confirming it is a scratch one",
    )
    demo.add_argument(
        "--scratch-queue",
        metavar="KEY",
        help="with REDIS_URL set: the Redis key to use as the queue, one no producer pushes to",
    )

    serve = _command(
        sub, "serve", _serve,
        "serve the Lambda handler over HTTP, like API Gateway",
        "Serve the Lambda handler over HTTP, like API Gateway (GET /health, POST /refresh).",
        environment_help(Settings.variables()),
    )  # fmt: skip
    serve.add_argument("--host", default="127.0.0.1", help="default %(default)s")
    serve.add_argument("--port", type=int, default=8000, help="default %(default)s; 0 picks a free port")
    serve.add_argument(
        "--schedule", type=float, default=0, help="fire the scheduled event every N seconds (default: never)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (see EXIT_CODES)."""
    args = _parser().parse_args(argv)  # a usage error exits 2 here, with argparse's message
    secrets: list[str] = []  # filled by the command once it has read its settings
    run: Command = args.run
    try:
        return run(args, secrets)
    except KeyboardInterrupt:
        return _fail("interrupted", secrets, EXIT_INTERRUPTED)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", secrets, EXIT_USAGE)
    except UsageError as exc:
        return _fail(f"error: {exc}", secrets, EXIT_USAGE)
    except CocLibError as exc:
        return _fail(f"error: {first_line(exc)}", secrets, EXIT_FAILED)
    except redis.RedisError as exc:
        return _fail(f"error: Redis: {describe(exc)}", secrets, EXIT_FAILED)
    except psycopg.Error as exc:
        return _fail(f"error: Postgres: {describe(exc)}", secrets, EXIT_FAILED)
    except Exception as exc:
        # A bug: its traceback goes to the (redacted, JSON) log, the one line to stderr.
        log.exception("the %s command failed", args.command)
        return _fail(f"error: unexpected {describe(exc)}", secrets, EXIT_FAILED)


def _fail(message: str, secrets: list[str], code: int) -> int:
    print(Redactor(secrets).text(message), file=sys.stderr)
    return code


def _drain(args: argparse.Namespace, secrets: list[str]) -> int:
    settings = Settings.from_env()
    secrets.extend(settings.secrets())
    configure_logging(settings.log_level, settings.secrets(), static={"environment": settings.environment})
    summary = asyncio.run(_drain_once(settings, args.seconds))
    sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    # A bug fails the command as it fails a Lambda invocation; what the run did is above.
    return EXIT_FAILED if summary["stopped"] == StopCode.INTERNAL_ERROR else EXIT_OK


async def _drain_once(settings: Settings, seconds: float) -> dict:
    worker = Worker(settings)
    try:
        return (await worker.drain(seconds)).as_dict()
    finally:
        await worker.close()


def _migrate(args: argparse.Namespace, secrets: list[str]) -> int:
    settings = DatabaseSettings.from_env()
    secrets.extend(settings.secrets())
    configure_logging("WARNING", settings.secrets())
    applied = migrate(settings.database_url)
    print(f"applied: {', '.join(applied)}" if applied else "up to date")
    return EXIT_OK


def _enqueue(args: argparse.Namespace, secrets: list[str]) -> int:
    settings = QueueSettings.from_env()
    secrets.extend(settings.secrets())
    configure_logging("WARNING", settings.secrets())
    for tag in args.tags:  # all or nothing: one bad tag queues none
        try:
            parse_tag(tag)
        except InvalidTagError as exc:
            raise UsageError(exc.detail) from None
    keys = QueueKeys(settings.refresh_queue_key)
    client = None
    try:
        client = sync_client(settings)  # a single node or a cluster, whichever REDIS_URL names
        for tag in args.tags:
            request_id = enqueue(client, args.kind, tag, keys=keys, priority=args.priority)
            print(f"{args.kind} {tag}: {request_id or 'already queued'}")
    except (redis.ConnectionError, redis.TimeoutError, ClusterUnavailable) as exc:
        where = mask_url_password(settings.redis_url)
        raise CocLibError(f"cannot reach Redis at {where}: {describe(exc)}") from None
    finally:
        if client is not None:
            client.close()
    return EXIT_OK


def _wait(args: argparse.Namespace, secrets: list[str]) -> int:
    if not args.tags and not args.ids:
        raise UsageError("give at least one TAG or --id")
    tags = []
    for tag in args.tags:
        try:
            tags.append((args.kind, parse_tag(tag)))
        except InvalidTagError as exc:
            raise UsageError(exc.detail) from None
    settings = DatabaseSettings.from_env()
    secrets.extend(settings.secrets())
    configure_logging("WARNING", settings.secrets())
    with RefreshWaiter.connect(settings.database_url, connect_timeout=10) as waiter:
        print(f"listening for {len(tags) + len(args.ids)} request(s)", file=sys.stderr, flush=True)
        waited = waiter.wait(ids=args.ids, tags=tags, timeout=args.timeout)
    for one in waited.settled:
        print(f"{one.kind or '-'} {one.tag or '-'}: {one.outcome} (id {one.id})")
    missing = [*waited.missing_ids, *(tag for _, tag in waited.missing_tags)]
    if missing:
        print(f"timed out after {args.timeout:g} s waiting for {', '.join(missing)}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _demo(args: argparse.Namespace, secrets: list[str]) -> int:
    from worker.demo import DemoRefused, run_demo  # needs the `local` extra, never shipped to Lambda

    try:
        return run_demo(
            requests=args.requests,
            scratch_database=args.scratch_database,
            scratch_queue=args.scratch_queue,
            secrets=secrets,
        )
    except DemoRefused as exc:
        raise UsageError(str(exc)) from None


def _serve(args: argparse.Namespace, secrets: list[str]) -> int:
    from worker.serve import serve

    return serve(args.host, args.port, schedule_seconds=args.schedule)
