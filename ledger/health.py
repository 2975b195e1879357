"""Health from the ledger: the `refresh_health` statistics and the rules that judge them.

`status` is one of:

* **unhealthy** (HTTP 503): Postgres or Redis cannot be reached, or does not answer within
  the probe budget, or the `refresh_health` view cannot be read (for example, migrations
  not applied). The worker cannot record or take work.
* **degraded** (HTTP 200): both answer, but at least one of these holds (`HealthRules`):

  - *failure rate*: over the view's window (the last hour), `failed / (fetched + failed +
    skipped_fresh)` (every settled request) is above `max_failure_rate` (0.2), counted only
    once at least `min_settled` (10) requests settled in the window, so two failures out of
    three do not page anyone;
  - *stalled*: the queue is not empty, nothing was fetched for `stall_after_seconds`
    (600 s, five schedule periods) or ever, and the oldest queued request has waited at
    least that long too (or its age is unknown), so a queue that just received its first
    request is not called stalled;
  - *orphaned attempts*: the view's `orphaned_attempts` (attempts in the last hour that
    nothing settled or ended after the 10-minute grace period, found through
    `refresh_orphaned_attempts_between`) is above `max_orphaned_attempts` (0): a run died
    between an API call and its commit; the view counts them up to `ORPHANS_COUNTED` (100),
    so a crash storm that leaves thousands costs health no more than a hundred do;
  - *circuit open*: the last recorded run stopped with `circuit_open` (maintenance, bad
    credentials, throttling, an API outage; a run that finds Postgres down records nothing,
    and that case is already unhealthy). When the cause is Redis configured wrong
    (`redis_wrong_type`, `redis_out_of_memory`, `redis_read_only`), the reason says so and what
    to fix: unlike an outage, it will not pass on its own.
* **healthy** (HTTP 200): none of the above.

`reasons` lists every rule that fired, in words, for the person reading the answer.
Columns of the view that a rule needs and the view does not have are skipped, so the
view can gain or reshape columns without breaking health.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coclib.db import Database
from coclib.reasons import REDIS_CONFIGURATION
from coclib.sqlfiles import load_queries
from ledger.values import plain

# refresh_health counts orphaned attempts up to this many (migration 0008's default).
ORPHANS_COUNTED = 100

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class HealthRules:
    """Thresholds of the degraded rules (see the module docstring)."""

    max_failure_rate: float = 0.2
    min_settled: int = 10
    stall_after_seconds: float = 600.0
    max_orphaned_attempts: int = 0
    degrade_on_circuit_open: bool = True


@dataclass(frozen=True)
class QueueState:
    """What health reads from Redis: lengths, the oldest request's age, whether a drain runs."""

    queue_size: int
    inflight_size: int
    oldest_queued_age_seconds: float | None
    draining: bool
    priority_queue_size: int = 0  # the priority lane


async def ledger_stats(db: Database, *, timeout: float) -> dict[str, Any]:
    """The one row of `refresh_health`, as JSON-ready values.

    `timeout` bounds waiting for a pooled connection; the caller bounds the whole call.
    """
    row = await db.fetch_one(load_queries()["health"], timeout=timeout)
    return {key: plain(value) for key, value in (row or {}).items()}


def assess(
    ledger: Mapping[str, Any] | None,
    queue: QueueState | None,
    *,
    now: float,
    rules: HealthRules | None = None,
    problems: list[str] | None = None,
) -> tuple[str, list[str]]:
    """Judge health; return `(status, reasons)`.

    `ledger` is `ledger_stats()` or None when Postgres could not be read; `queue` is None
    when Redis could not be read; `problems` says why (it makes the status unhealthy).
    """
    if problems or ledger is None or queue is None:
        return UNHEALTHY, list(problems or ["a dependency could not be read"])
    rules = rules or HealthRules()
    reasons: list[str] = []

    fetched, failed = _int(ledger.get("fetched")), _int(ledger.get("failed"))
    fresh = _int(ledger.get("skipped_fresh")) or 0  # settled as well, without a call
    window = ledger.get("window_seconds")
    if fetched is not None and failed is not None and fetched + failed + fresh >= rules.min_settled:
        rate = failed / (fetched + failed + fresh)
        if rate > rules.max_failure_rate:
            over = f" over the last {window} s" if window else ""
            skipped = f", {fresh} skipped as fresh" if fresh else ""
            reasons.append(
                f"failure rate {rate:.2f}{over} is above {rules.max_failure_rate:.2f} "
                f"({failed} failed, {fetched} fetched{skipped})"
            )

    waiting = queue.queue_size + queue.priority_queue_size
    if waiting > 0 and "last_fetched_at" in ledger:
        since_fetch = _age(ledger.get("last_fetched_at"), now)
        stale_fetch = since_fetch is None or since_fetch >= rules.stall_after_seconds
        oldest = queue.oldest_queued_age_seconds
        waited = oldest is None or oldest >= rules.stall_after_seconds
        if stale_fetch and waited:
            last = (
                "nothing was ever fetched"
                if since_fetch is None
                else (f"nothing fetched for {since_fetch:.0f} s")
            )
            reasons.append(f"stalled: {last} while {waiting} requests are queued")

    orphans = _int(ledger.get("orphaned_attempts"))
    if orphans is not None and orphans > rules.max_orphaned_attempts:
        many = f"{orphans} or more" if orphans >= ORPHANS_COUNTED else str(orphans)
        reasons.append(f"{many} orphaned attempts: a run died between an API call and its commit")

    if rules.degrade_on_circuit_open and ledger.get("last_run_stopped") == "circuit_open":
        cause = ledger.get("last_run_cause")
        said = f"the last run opened the circuit ({cause})" if cause else "the last run opened the circuit"
        hint = REDIS_CONFIGURATION.get(cause) if isinstance(cause, str) else None
        if hint is not None:
            # Not an outage that passes: every run will stop the same way until someone fixes it.
            said += f": Redis configuration, {hint}"
        reasons.append(said)

    return (DEGRADED if reasons else HEALTHY), reasons


def _int(value: Any) -> int | None:
    return None if value is None or isinstance(value, bool) else int(value)


def _age(iso: Any, now: float) -> float | None:
    if not isinstance(iso, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(iso)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return max(0.0, now - moment.timestamp())
