"""Run metrics as CloudWatch Embedded Metric Format: one JSON line on stdout per run.

CloudWatch Logs turns the line into metrics in namespace `CocRefreshWorker` with the
dimensions `environment` and `FunctionName` (so two deployments in one account and environment
never mix their figures, and the alarms watch exactly their own function); no API call, no extra
permission. Metric names:

| metric | unit | value |
| --- | --- | --- |
| `processed_requests` | Count | requests settled in the run (`fetched` + `failed` + `skipped-fresh`) |
| `queue_size` | Count | length of the queue list when the run ended |
| `priority_queue_size` | Count | length of the priority lane when the run ended |
| `inflight_size` | Count | length of the in-flight list when the run ended |
| `api_requests_per_second` | Count/Second | API calls made / run duration |
| `fetched`, `failed`, `deferred`, `skipped_deadline`, `skipped_fresh`, `attempted` | Count | rows each |
| `changed_share_player`, `_clan`, `_war` | Percent | fetches of the kind that changed the body (1) |
| `run_duration_ms` | Milliseconds | how long the run took |
| `ledger_bytes` | Bytes | the ledger's size on disk after retention (its partitions and indexes) |
| `halted` | Count | 1 when the run stopped on a systemic fault (`circuit_open`, `lease_lost`,
  `internal_error`), else 0 |

A run that halted prints a second line: `halted` = 1 with a third dimension, `cause` (the
fault's reason code: `database_unavailable`, `forbidden`, `maintenance`, ...), so a graph or an
alarm can tell the causes apart. The `<function>-halted` alarm pages when every run halts
for a cause other than `maintenance` (the API's own downtime, nothing to do): a drain that
fails without failing the invocation (Postgres down, a rotated password, a refused key, a
missing migration) would otherwise be seen by no Lambda metric.

(1) The useful refreshes per call: of the run's fetches of that kind, the share whose body
differed from the stored one. Sent only for the kinds the run fetched.

The same line carries, as searchable non-metric keys, the run's `run_id`, why it
`stopped`, its `cause` and what `trigger`ed it (scheduled, http, operator).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric

from ledger.outcomes import Outcome

log = logging.getLogger(__name__)

NAMESPACE = "CocRefreshWorker"
# Outcome values as metric names: CloudWatch accepts '-', dashboards read '_' better.
OUTCOME_METRICS = {outcome.value: outcome.value.replace("-", "_") for outcome in Outcome}
# Stops that mean the run could not do its work although nothing in the request stream was
# wrong: the fault is the system's (its cause says which), and it will not go away by itself.
HALTING_STOPS = frozenset({"circuit_open", "lease_lost", "internal_error"})
# What FunctionName says outside Lambda (the local server, the CLI, tests without a context).
LOCAL_FUNCTION_NAME = "local"


class RunMetrics:
    """Publishes one EMF line per drain run."""

    def __init__(
        self,
        environment: str,
        *,
        function_name: str | None = None,
        redact: Callable[[str], str] = str,
        metrics: Metrics | None = None,
    ) -> None:
        self.environment = environment
        self.function_name = function_name or LOCAL_FUNCTION_NAME
        # The EMF line is printed, not logged: the log redaction does not see it.
        self.redact = redact
        self.metrics = metrics or Metrics(namespace=NAMESPACE)

    def publish(self, summary: dict[str, Any], *, trigger: str) -> None:
        """Emit the metrics of one run summary (`RunSummary.as_dict()`)."""
        m = self.metrics
        # Powertools keeps metrics in class-level state: start from a clean set.
        m.clear_metrics()
        m.add_dimension(name="environment", value=self.environment)
        m.add_dimension(name="FunctionName", value=self.function_name)
        halted = summary.get("stopped") in HALTING_STOPS
        m.add_metric(name="halted", unit=MetricUnit.Count, value=1 if halted else 0)
        counts = summary.get("counts") or {}
        m.add_metric(
            name="processed_requests", unit=MetricUnit.Count, value=summary.get("processed_requests", 0)
        )
        for outcome, name in OUTCOME_METRICS.items():
            m.add_metric(name=name, unit=MetricUnit.Count, value=counts.get(outcome, 0))
        for name in ("queue_size", "priority_queue_size", "inflight_size"):
            if summary.get(name) is not None:
                m.add_metric(name=name, unit=MetricUnit.Count, value=summary[name])
        for kind, change in (summary.get("fetch_changes") or {}).items():
            if change.get("share") is not None:
                m.add_metric(
                    name=f"changed_share_{kind}",
                    unit=MetricUnit.Percent,
                    value=round(change["share"] * 100, 2),
                )
        if summary.get("ledger_bytes") is not None:
            m.add_metric(name="ledger_bytes", unit=MetricUnit.Bytes, value=summary["ledger_bytes"])
        m.add_metric(
            name="api_requests_per_second",
            unit=MetricUnit.CountPerSecond,
            value=summary.get("api_requests_per_second", 0.0),
        )
        m.add_metric(
            name="run_duration_ms",
            unit=MetricUnit.Milliseconds,
            value=round(summary.get("duration_s", 0.0) * 1000, 1),
        )
        for key in ("run_id", "stopped", "cause"):
            if summary.get(key) is not None:
                m.add_metadata(key=key, value=self.redact(str(summary[key])))
        m.add_metadata(key="trigger", value=trigger)
        try:
            m.flush_metrics()
            if halted:
                self._publish_cause(summary.get("cause") or summary["stopped"])
        except Exception:  # metrics must never fail a run that did its work
            log.warning("could not publish run metrics", exc_info=True)

    def _publish_cause(self, cause: str) -> None:
        """The halt again, by cause: its own line, so the run's other metrics are not repeated."""
        with single_metric(
            name="halted",
            unit=MetricUnit.Count,
            value=1,
            namespace=NAMESPACE,
            default_dimensions={"environment": self.environment, "FunctionName": self.function_name},
        ) as metric:
            # A reason code (lower-case letters and underscores): nothing to redact.
            metric.add_dimension(name="cause", value=cause)
