"""Logging: one JSON object per line, with every secret value redacted from the output."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

import orjson

REDACTED = "***"
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """`{"level", "logger", "message", …extra}` on one line; extra fields become keys."""

    def __init__(self, static: dict[str, object] | None = None) -> None:
        super().__init__()
        self.static = static or {}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "timestamp": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class RedactingFormatter(logging.Formatter):
    """Wraps another formatter and blanks every known secret in what it produced.

    Redacting the finished line (not the message) also covers exception text, extra
    fields and third-party loggers (coc.py logs its API keys at DEBUG).
    """

    def __init__(self, inner: logging.Formatter, secrets: Iterable[str]) -> None:
        super().__init__()
        self.inner = inner
        needles = set()
        for secret in secrets:
            if secret:
                needles.add(secret)
                needles.add(orjson.dumps(secret).decode()[1:-1])  # as it appears inside JSON
        # Longest first, so a secret containing another is blanked whole.
        self.needles = sorted(needles, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        for needle in self.needles:
            if needle in line:
                line = line.replace(needle, REDACTED)
        return line


def configure_logging(level: str, secrets: Iterable[str], *, static: dict[str, object] | None = None) -> None:
    """Route every logger to stdout as redacted JSON lines (CloudWatch reads stdout)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(RedactingFormatter(JsonFormatter(static), secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Chatty libraries stay at INFO or above even when we debug our own code.
    for noisy in ("coc", "aiohttp", "psycopg", "botocore"):
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.INFO))
