"""Exceptions as one short line, for error messages, log fields and ledger details.

Driver errors (psycopg, redis, aiohttp) can run to several lines (a hint, a context, the
statement); the first line says what happened. None of them carries a password: psycopg
and redis-py name host and user but never the password, and callers redact besides.
"""

from __future__ import annotations

MAX_CHARS = 300


def first_line(exc: BaseException, limit: int = MAX_CHARS) -> str:
    """The first non-blank line of `exc`'s message, at most `limit` characters;
    the exception's class name when the message is empty."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(exc).__name__


def describe(exc: BaseException, limit: int = MAX_CHARS) -> str:
    """`Class: first line`, or the class name alone when the message is empty."""
    line = first_line(exc, limit)
    name = type(exc).__name__
    return name if line == name else f"{name}: {line}"
