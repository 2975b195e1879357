"""The outcome model: the values a ledger row's `outcome` and `reason` take."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from coclib.reasons import Reason


class Outcome(StrEnum):
    """What happened to a request, as written in `refresh_ledger.outcome`.

    The outcomes in `SETTLING` settle a request for good; `skipped-deadline` and `deferred`
    end its story for one run and put it back at the head of the queue; `attempted` only says
    an API call is about to be made.
    """

    ATTEMPTED = "attempted"
    FETCHED = "fetched"
    FAILED = "failed"
    SKIPPED_DEADLINE = "skipped-deadline"
    DEFERRED = "deferred"

    @property
    def settles(self) -> bool:
        """Whether a row with this outcome settles its request for good."""
        return self in SETTLING


# The one definition of what settles a request: the drain, crash recovery (through the
# queries it parameterises) and the tests all read it from here.
SETTLING = frozenset({Outcome.FETCHED, Outcome.FAILED})


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One row to append to `refresh_ledger`."""

    request_id: str
    outcome: Outcome
    kind: str | None = None
    tag: str | None = None
    reason: Reason | None = None
    detail: str | None = None
    http_status: int | None = None
    latency_ms: int | None = None
