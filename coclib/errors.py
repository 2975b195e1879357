"""The exception tree shared by coclib, the ledger and the worker.

Two branches matter to the drain: a `RequestError` belongs to one refresh request
(it is written as `failed` and the run goes on), a `SystemicError` belongs to the
world around the worker (the API, its credentials, Postgres) and opens the circuit.
"""

from __future__ import annotations


class CocLibError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(CocLibError):
    """A setting is missing or invalid; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"{variable}: {problem}")


class RequestError(CocLibError):
    """A fault of one request: written as `failed` with `reason`, never retried."""

    def __init__(self, reason: str, detail: str, *, http_status: int | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.http_status = http_status
        super().__init__(f"{reason}: {detail}")


class InvalidTagError(RequestError):
    """A tag that cannot be a Clash of Clans tag, even after normalisation."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_tag", detail)


class InvalidRequestError(RequestError):
    """A queue item that is not a well-formed refresh request."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalid_request", detail)


class TransientError(CocLibError):
    """A timeout or 5xx that may pass: retried later in the run, then `failed`."""

    def __init__(self, reason: str, detail: str, *, http_status: int | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.http_status = http_status
        super().__init__(f"{reason}: {detail}")


class SystemicError(CocLibError):
    """A fault of the surroundings (maintenance, credentials, throttling, outage): opens the circuit."""

    def __init__(self, cause: str, detail: str, *, http_status: int | None = None) -> None:
        self.cause = cause
        self.detail = detail
        self.http_status = http_status
        super().__init__(f"{cause}: {detail}")


class DatabaseUnavailable(SystemicError):
    """Postgres could not be reached or refused the work."""

    def __init__(self, detail: str) -> None:
        super().__init__("database_unavailable", detail)
