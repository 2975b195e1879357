"""The outcome model: the values a ledger row's `outcome` and `reason` take."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from coclib.completions import SETTLED_OUTCOMES
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
    SKIPPED_FRESH = "skipped-fresh"  # the stored snapshot is still inside the API's max-age

    @property
    def settles(self) -> bool:
        """Whether a row with this outcome settles its request for good."""
        return self in SETTLING


# What settles a request, as outcomes: the drain, crash recovery (through the queries it
# parameterises), the completion signal (NOTIFY refresh_done), redrive and the tests read it
# here. Its one home is coclib.completions.SETTLED_OUTCOMES, the set a producer's waiter
# (which has coclib alone) looks for: a name there that is no outcome fails at import.
SETTLING = frozenset(Outcome(name) for name in SETTLED_OUTCOMES)


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
    changed: bool | None = None  # `fetched`: whether the body differed from the stored one
