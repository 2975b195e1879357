"""Logging: one JSON object per line on stdout, with every secret blanked from the output.

The lines are Powertools' structured format (`level`, `location`, `message`, `timestamp`,
`service`, plus `cold_start`, `function_name`, `function_request_id`, … inside Lambda and
every `extra=` field), so Powertools' documented CloudWatch Logs Insights queries work.

The formatter sits on the *root* logger rather than on a Powertools `Logger` object:
a Powertools `Logger` owns one named logger, but coc.py, psycopg, aiohttp and our own
modules log through their own `logging.getLogger(__name__)` loggers, and every one of
their lines must be JSON and redacted. One root handler covers them all, including
loggers created after configuration.

Redaction works on the finished line, so it also covers exception text, `extra` fields
and third-party messages. It blanks the known secrets (`Settings.secrets()`, in the
forms they take inside JSON and URLs) and anything shaped like a Clash of Clans API key
(a JWT): an email/password login makes coc.py create keys that no setting names, and
coc.py prints the key list at DEBUG.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote

import orjson
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

SERVICE = "coc-refresh-worker"
REDACTED = "***"
# Libraries' floors: they stay at these levels or above even when we debug our own code.
# coc.py logs response bodies and key lists at DEBUG (the redaction would cope; the volume
# would not); psycopg's pool logs every connection checkout at INFO.
NOISY_LOGGERS = {
    "coc": logging.INFO,
    "asyncio": logging.INFO,
    "redis": logging.INFO,
    "aiohttp": logging.WARNING,
    "psycopg": logging.WARNING,
    "botocore": logging.WARNING,
    "urllib3": logging.WARNING,
}
# A JWT: CoC API keys and the portal's temporary token are all of this shape. Either base64
# alphabet (URL-safe or standard, which the portal's keys may use) and any padding.
_JWT = re.compile(r"eyJ[A-Za-z0-9_+/-]{8,}={0,2}\.eyJ[A-Za-z0-9_+/-]{8,}={0,2}\.[A-Za-z0-9_+/=-]*")
# Python 3.12 adds `taskName` to every record; inside asyncio it is noise on every line.
_DROPPED_KEYS = ("taskName",)


class Redactor:
    """Blanks secret values in text and in JSON-like values."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.needles: list[str] = []
        self.learn(secrets)

    def learn(self, secrets: Iterable[str]) -> None:
        """Blank these too (secrets read again after a rotation), besides those already known."""
        needles: set[str] = set(self.needles)
        for secret in secrets:
            if not secret:
                continue
            for form in {secret, unquote(secret), quote(secret, safe="")}:
                needles.add(form)
                needles.add(json.dumps(form)[1:-1])  # as it appears inside a JSON string
                needles.add(orjson.dumps(form).decode()[1:-1])  # (non-ASCII left as is)
        # Longest first, so a secret containing another is blanked whole.
        self.needles = sorted((n for n in needles if n), key=len, reverse=True)

    def text(self, text: str) -> str:
        """`text` with every secret and every JWT replaced by `***`."""
        for needle in self.needles:
            if needle in text:
                text = text.replace(needle, REDACTED)
        if "eyJ" in text:
            text = _JWT.sub(REDACTED, text)
        return text

    def value(self, value: Any) -> Any:
        """A copy of a JSON-like value (dicts, lists, strings) with its strings redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


class RedactingFormatter(LambdaPowertoolsFormatter):
    """Powertools' JSON line, with secrets blanked from the finished text."""

    def __init__(self, redactor: Redactor, **keys: Any) -> None:
        super().__init__(
            json_serializer=_dumps,
            utc=True,
            use_rfc3339=True,
            service=SERVICE,
            **keys,
        )
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor.text(super().format(record))

    def _extract_log_keys(self, log_record: logging.LogRecord) -> dict[str, Any]:
        keys = super()._extract_log_keys(log_record)
        for name in _DROPPED_KEYS:
            keys.pop(name, None)
        return keys


def _dumps(entry: Mapping[str, Any]) -> str:
    return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is at the time (test capture replaces it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass  # always sys.stdout


def _is_pytest_capture(handler: logging.Handler) -> bool:
    # pytest's caplog handlers stay, so tests can read the raw records.
    return type(handler).__module__ == "_pytest.logging"


def configure_logging(
    level: str, secrets: Iterable[str], *, static: dict[str, object] | None = None
) -> RedactingFormatter:
    """Route every logger to stdout as redacted JSON lines (CloudWatch reads stdout).

    Replaces whatever handlers the root logger had (Lambda's runtime installs a plain-text
    one). Returns the formatter, so callers can append per-invocation keys to every line.
    """
    formatter = RedactingFormatter(Redactor(secrets), **(static or {}))
    handler = _StdoutHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if not _is_pytest_capture(old):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    numeric = logging.getLevelName(level)
    for name, floor in NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(max(numeric, floor))
    return formatter


def lambda_context_keys(context: Any) -> dict[str, Any]:
    """The Lambda context fields Powertools' Logger adds to every line, under its key names.

    Tolerates a missing context (operators, tests) and missing attributes.
    """
    fields = {
        "function_name": "function_name",
        "function_memory_size": "memory_limit_in_mb",
        "function_arn": "invoked_function_arn",
        "function_request_id": "aws_request_id",
    }
    return {key: getattr(context, attr, None) for key, attr in fields.items()}
