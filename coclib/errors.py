"""The exception tree shared by coclib, the ledger and the worker.

Three branches matter to the drain, each error carrying a `Reason` code and a human
`detail`: a `RequestError` belongs to one refresh request (it is written as `failed` and the
run goes on), a `TransientError` may pass (tried again later in the run, then `failed`), and a
`SystemicError` belongs to the world around the worker (the API, its credentials, Postgres,
Redis) and opens the circuit. `StorageRefused` is Postgres refusing one batch's data, which
the ledger writer narrows down to the request that caused it.
"""

from __future__ import annotations

from coclib.reasons import Reason


class CocLibError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(CocLibError):
    """A setting is missing or invalid; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"{variable}: {problem}")


class CodedError(CocLibError):
    """An error with a reason code, a human detail and, from the API, the HTTP status."""

    def __init__(self, reason: Reason, detail: str, *, http_status: int | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.http_status = http_status
        super().__init__(f"{reason}: {detail}")


class RequestError(CodedError):
    """A fault of one request: written as `failed` with `reason`, never retried."""


class InvalidTagError(RequestError):
    """A tag that cannot be a Clash of Clans tag, even after normalisation."""

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.INVALID_TAG, detail)


class InvalidRequestError(RequestError):
    """A queue item that is not a well-formed refresh request."""

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.INVALID_REQUEST, detail)


class TransientError(CodedError):
    """A timeout, 5xx or garbled answer that may pass: retried later in the run, then `failed`."""


class SystemicError(CodedError):
    """A fault of the surroundings (maintenance, credentials, throttling, outage): opens the circuit."""


class DatabaseUnavailable(SystemicError):
    """Postgres could not be reached, or failed in a way no one request's data explains."""

    def __init__(self, detail: str) -> None:
        super().__init__(Reason.DATABASE_UNAVAILABLE, detail)


class StorageRefused(CocLibError):
    """Postgres refused the data of a write (a bad value, a CHECK, a limit): the transaction
    rolled back, and retrying without the offending request will work."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)
