"""Why a run stops, decided in one place with one precedence.

Many things can end a run, and several can happen at once: the queue runs dry while Postgres
dies, a bug surfaces while the run is already handing over. The run proposes each stop to its
`Stopping`, which keeps the one that matters most:

1. an internal error (a bug: the invocation must fail) or a cancellation;
2. a storage fault (Postgres or Redis lost) or a lost lease: the run's last writes may not have
   landed, or (the lease lost: its changes to the in-flight list are fenced on it) Redis refuses
   them, and items are left for recovery, so it outranks
3. any other systemic fault (the API in maintenance, a refused key, a streak of errors);
4. everything else (queue empty, max requests, deadline, hand-over).

A stop replaces an earlier one only when it ranks higher; the detail then says what the run
was stopping for before. Among equals the first stands.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from redis.exceptions import RedisError

from coclib.errors import DatabaseUnavailable
from coclib.errortext import describe
from coclib.queue import LeaseLost
from coclib.reasons import REDIS_FAULTS, Reason
from coclib.redis_client import redis_fault
from coclib.storable import storable_text
from ledger.outcomes import Outcome

log = logging.getLogger(__name__)


class StopCode(StrEnum):
    """Why a run stopped (`RunSummary.stopped`)."""

    QUEUE_EMPTY = "queue_empty"
    MAX_REQUESTS = "max_requests"
    DEADLINE = "deadline"
    HANDED_OVER = "handed_over"  # a newer scheduled invocation took over
    CIRCUIT_OPEN = "circuit_open"  # a systemic fault: see the cause
    LEASE_HELD = "lease_held"  # another drain was running: nothing done
    LEASE_LOST = "lease_lost"
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"  # a bug: the invocation fails


# Causes of a `circuit_open` that mean the run lost its own storage (Redis down, or refusing
# because it is configured wrong: `coclib.redis_client.redis_fault`).
STORAGE_FAULTS = frozenset({Reason.DATABASE_UNAVAILABLE, *REDIS_FAULTS})


@dataclass(frozen=True, slots=True)
class Stop:
    """A stop: its code, the reason code behind it (for `circuit_open`: which fault), and the story."""

    code: StopCode
    cause: Reason | None = None
    detail: str | None = None

    @property
    def rank(self) -> int:
        """Its precedence: higher replaces lower (see the module's docstring)."""
        if self.code in (StopCode.INTERNAL_ERROR, StopCode.CANCELLED):
            return 3
        if self.code is StopCode.LEASE_LOST:
            return 2
        if self.code is StopCode.CIRCUIT_OPEN:
            return 2 if self.cause in STORAGE_FAULTS else 1
        return 0

    def closing(self) -> tuple[Outcome, Reason]:
        """The outcome and reason of the rows that put unfinished requests back."""
        match self.code:
            case StopCode.CIRCUIT_OPEN:
                return Outcome.DEFERRED, self.cause or Reason.API_DOWN
            case StopCode.LEASE_LOST:
                return Outcome.DEFERRED, Reason.LEASE_LOST
            case StopCode.INTERNAL_ERROR:
                return Outcome.DEFERRED, Reason.INTERNAL_ERROR
            case StopCode.HANDED_OVER:
                return Outcome.SKIPPED_DEADLINE, Reason.HANDED_OVER
            case StopCode.CANCELLED:
                return Outcome.SKIPPED_DEADLINE, Reason.CANCELLED
            case _:
                return Outcome.SKIPPED_DEADLINE, Reason.DEADLINE


NOT_STOPPED = Stop(StopCode.QUEUE_EMPTY)  # what a run that was never stopped reports


class Stopping:
    """The run's stop, and the facts about its storage that decide how it winds down."""

    def __init__(self) -> None:
        self.stop: Stop | None = None
        self.error: BaseException | None = None  # the bug behind `internal_error`
        self.database_up = False  # Postgres answered at the start: the run can record its summary…
        self.database_lost = False  # …until it stopped answering: nothing more is written

    @property
    def stopped(self) -> bool:
        return self.stop is not None

    @property
    def final(self) -> Stop:
        return self.stop or NOT_STOPPED

    def is_(self, code: StopCode) -> bool:
        return self.stop is not None and self.stop.code is code

    def halt(self, code: StopCode, cause: Reason | None = None, detail: str | None = None) -> None:
        """Propose a stop; it stands if nothing of its rank or higher was decided before."""
        new = Stop(code, cause, None if detail is None else storable_text(detail))
        previous = self.stop
        if previous is not None:
            if new.rank <= previous.rank:
                return
            was = f"{previous.code} {previous.cause}" if previous.cause else str(previous.code)
            new = Stop(code, cause, storable_text(f"{detail} (while stopping: {was})"))
        self.stop = new
        quiet = code in (StopCode.QUEUE_EMPTY, StopCode.MAX_REQUESTS)
        log.log(
            logging.INFO if quiet else logging.WARNING,
            "drain stopping: %s%s%s",
            code,
            f" ({cause})" if cause else "",
            f": {detail}" if detail else "",
        )

    def database_fault(self, exc: DatabaseUnavailable) -> None:
        """Postgres failed a read or a write: nothing more is written in this run."""
        self.database_lost = True
        self.halt(StopCode.CIRCUIT_OPEN, exc.reason, exc.detail)

    def redis_fault(self, exc: RedisError) -> None:
        """Redis failed a command (after the client's own quick retries): down, or refusing it
        for how it is set up (a key of another type, out of memory, a read-only replica); or
        the fence refused it (`LeaseLost`): the lease is lost, not Redis."""
        if isinstance(exc, LeaseLost):
            self.lease_lost(f"the drain lease expired or was taken: its {exc.operation} was refused")
            return
        self.halt(StopCode.CIRCUIT_OPEN, *redis_fault(exc))

    def lease_lost(self, detail: str) -> None:
        """The drain lease is no longer this run's: it may change nothing more in the in-flight
        list (the fence), and what it holds stays there for the lease holder's recovery."""
        self.halt(StopCode.LEASE_LOST, Reason.LEASE_LOST, detail)

    def internal_error(self, exc: BaseException, whose: str = "") -> None:
        """A bug: the run stops, and the invocation fails once the run is wound down."""
        log.error("unexpected error%s; stopping the run", whose, exc_info=exc)
        self.halt(StopCode.INTERNAL_ERROR, Reason.INTERNAL_ERROR, describe(exc))
        if self.is_(StopCode.INTERNAL_ERROR) and self.error is None:
            self.error = exc

    @property
    def explains_stranded_items(self) -> bool:
        """Whether a fault of the run's own can have left items it could not record."""
        stop = self.final
        return (
            self.database_lost
            or stop.cause in STORAGE_FAULTS
            or stop.code in (StopCode.INTERNAL_ERROR, StopCode.CANCELLED, StopCode.LEASE_LOST)
        )
