"""`python -m ledger`: failure audit, partitions and retention, from the command line.

    python -m ledger audit --list
    python -m ledger audit failures_by_reason --since 6h [--json]
    python -m ledger audit tag_history --tag '#2PP'
    python -m ledger partitions [--ensure]
    python -m ledger retention --days 30 [--dry-run]

`audit NAME` runs `sql/audit/NAME.sql`, the same file `psql -f` runs; its options are the
file's `-v` variables (`min_failures` is `--min-failures`). `--since`/`--until` also take
`30m`, `6h`, `2d` or `1w` meaning that long ago. DATABASE_URL comes from the settings.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import orjson
import psycopg

from coclib.errors import ConfigError
from coclib.errortext import first_line
from coclib.settings import DatabaseSettings
from ledger.audit import AuditError, AuditQuery, load_audits, render_table, run_audit
from ledger.partitions import (
    DAYS_AHEAD,
    drop_expired_partitions,
    ensure_partitions_sync,
    expired_partitions,
    list_partitions,
)
from ledger.values import plain

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_TIME_PARAMS = ("since", "until")


def _option(param: str) -> str:
    return "--" + param.replace("_", "-")


def _parser(audits: Mapping[str, AuditQuery]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ledger", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    audit = sub.add_parser("audit", help="run a failure-audit query of sql/audit/")
    audit.add_argument("--list", action="store_true", help="list the audit queries and their parameters")
    names = audit.add_subparsers(dest="name", metavar="NAME")
    for name, query in audits.items():
        one = names.add_parser(
            name,
            help=query.title,
            description=query.doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for param in query.params:
            default = query.defaults.get(param)
            hint = (
                "required" if param in query.required else f"default {default!r}" if default else "optional"
            )
            if param in _TIME_PARAMS:
                hint += "; a timestamp, or 30m/6h/2d/1w ago"
            one.add_argument(_option(param), dest=param, required=param in query.required, help=hint)
        one.add_argument("--json", action="store_true", help="print the rows as a JSON array")

    parts = sub.add_parser("partitions", help="list the ledger's partitions")
    parts.add_argument("--ensure", action="store_true", help=f"first make partitions {DAYS_AHEAD} days ahead")
    parts.add_argument("--json", action="store_true")

    retention = sub.add_parser("retention", help="drop whole partitions older than N days")
    retention.add_argument("--days", type=int, required=True, help="keep at least this many days (1 or more)")
    retention.add_argument("--dry-run", action="store_true", help="list what would be dropped, drop nothing")
    retention.add_argument("--json", action="store_true")
    return parser


def _time(value: str, now: datetime) -> str:
    """`6h` and friends as an absolute UTC timestamp; anything else is left to Postgres."""
    match = _AGO.match(value.strip())
    if not match:
        return value
    ago = timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
    return (now - ago).isoformat()


def _print(columns: list[str], rows: list[dict], as_json: bool) -> None:
    if as_json:
        out = [{c: plain(row[c]) for c in columns} for row in rows]
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render_table(columns, rows) + "\n")


def _audit(args: argparse.Namespace, audits: Mapping[str, AuditQuery], conn: psycopg.Connection) -> int:
    query = audits[args.name]
    now = datetime.now(UTC)
    values = {}
    for param in query.params:
        value = getattr(args, param)
        if value is not None and param in _TIME_PARAMS:
            value = _time(value, now)
        values[param] = value
    columns, rows = run_audit(conn, query, values)
    _print(columns, rows, args.json)
    return 0


def _list(audits: Mapping[str, AuditQuery]) -> int:
    width = max(map(len, audits), default=0)
    for name, query in audits.items():
        params = " ".join(
            f"{_option(p)} X" if p in query.required else f"[{_option(p)}]" for p in query.params
        )
        print(f"{name.ljust(width)}  {query.title}")
        if params:
            print(f"{''.ljust(width)}  {params}")
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one command; return the exit status (2: configuration or usage, 1: failure)."""
    try:
        audits = load_audits()
    except AuditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    parser = _parser(audits)
    args = parser.parse_args(argv)
    if args.command == "audit" and (args.list or not args.name):
        if not args.list:
            parser.parse_args(["audit", "--help"])
        return _list(audits)
    try:
        # A reference (DATABASE_URL_SECRET_ARN, ...) is refused, naming it: only Lambda reads those.
        database_url = DatabaseSettings.from_env(environ).database_url
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        # JIT compiling costs more than any audit query (see sql/migrations/0003).
        with psycopg.connect(database_url, autocommit=True, connect_timeout=10, options="-c jit=off") as conn:
            if args.command == "audit":
                return _audit(args, audits, conn)
            if args.command == "partitions":
                if args.ensure:
                    created = ensure_partitions_sync(conn)
                    print(f"made {created} partition(s)", file=sys.stderr)
                rows = list_partitions(conn)
                _print(
                    ["partition", "range_start", "range_end", "is_default", "estimated_rows", "size"],
                    rows,
                    args.json,
                )
                return 0
            if args.command == "retention":
                rows = (expired_partitions if args.dry_run else drop_expired_partitions)(conn, args.days)
                columns = ["partition", "range_start", "range_end", "is_default", "estimated_rows"]
                if not args.json:
                    verb = "would drop" if args.dry_run else "dropped"
                    print(f"{verb} {len(rows)} partition(s) older than {args.days} days", file=sys.stderr)
                _print(columns, rows, args.json)
                return 0
    except AuditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:
        print(f"error: cannot reach Postgres: {first_line(exc)}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
