"""The outcome model: the values a ledger row's `outcome` and `reason` take."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """What happened to a request, as written in `refresh_ledger.outcome`."""

    ATTEMPTED = "attempted"
    FETCHED = "fetched"
    FAILED = "failed"
    SKIPPED_DEADLINE = "skipped-deadline"
    DEFERRED = "deferred"

    @property
    def terminal(self) -> bool:
        """Ends the request's story for this run."""
        return self is not Outcome.ATTEMPTED

    @property
    def settles(self) -> bool:
        """Ends the request's story for good: never taken again."""
        return self in (Outcome.FETCHED, Outcome.FAILED)


# Reasons the worker itself writes; request errors from coclib bring their own
# (invalid_request, invalid_tag, not_found, private_war_log, bad_request, http_error,
# timeout, upstream_error, connection_error) and systemic causes become `deferred` reasons
# (maintenance, forbidden, throttled, credentials, login, database_unavailable, upstream).
REASON_DEADLINE = "deadline"
REASON_INTERRUPTED = "interrupted"
REASON_LEASE_LOST = "lease_lost"


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One row to append to `refresh_ledger`."""

    request_id: str
    outcome: Outcome
    kind: str | None = None
    tag: str | None = None
    reason: str | None = None
    detail: str | None = None
    http_status: int | None = None
    latency_ms: int | None = None
