"""Run metrics as CloudWatch Embedded Metric Format: one JSON line on stdout per run.

CloudWatch Logs turns the line into metrics in namespace `CocRefreshWorker` with the one
dimension `environment`; no API call, no extra permission. Metric names:

| metric | unit | value |
| --- | --- | --- |
| `processed_requests` | Count | requests settled in the run (`fetched` + `failed`) |
| `queue_size` | Count | length of the queue list when the run ended |
| `priority_queue_size` | Count | length of the priority lane when the run ended |
| `inflight_size` | Count | length of the in-flight list when the run ended |
| `api_requests_per_second` | Count/Second | API calls made / run duration |
| `fetched`, `failed`, `deferred`, `skipped_deadline`, `attempted` | Count | the run's rows per outcome |
| `run_duration_ms` | Milliseconds | how long the run took |
| `ledger_bytes` | Bytes | the ledger's size on disk after retention (its partitions and indexes) |

The same line carries, as searchable non-metric keys, the run's `run_id`, why it
`stopped`, its `cause` and what `trigger`ed it (scheduled, http, operator).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from ledger.outcomes import Outcome

log = logging.getLogger(__name__)

NAMESPACE = "CocRefreshWorker"
# Outcome values as metric names: CloudWatch accepts '-', dashboards read '_' better.
OUTCOME_METRICS = {outcome.value: outcome.value.replace("-", "_") for outcome in Outcome}


class RunMetrics:
    """Publishes one EMF line per drain run."""

    def __init__(
        self,
        environment: str,
        *,
        redact: Callable[[str], str] = str,
        metrics: Metrics | None = None,
    ) -> None:
        self.environment = environment
        # The EMF line is printed, not logged: the log redaction does not see it.
        self.redact = redact
        self.metrics = metrics or Metrics(namespace=NAMESPACE)

    def publish(self, summary: dict[str, Any], *, trigger: str) -> None:
        """Emit the metrics of one run summary (`RunSummary.as_dict()`)."""
        m = self.metrics
        # Powertools keeps metrics in class-level state: start from a clean set.
        m.clear_metrics()
        m.add_dimension(name="environment", value=self.environment)
        counts = summary.get("counts") or {}
        m.add_metric(
            name="processed_requests", unit=MetricUnit.Count, value=summary.get("processed_requests", 0)
        )
        for outcome, name in OUTCOME_METRICS.items():
            m.add_metric(name=name, unit=MetricUnit.Count, value=counts.get(outcome, 0))
        for name in ("queue_size", "priority_queue_size", "inflight_size"):
            if summary.get(name) is not None:
                m.add_metric(name=name, unit=MetricUnit.Count, value=summary[name])
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
        except Exception:  # metrics must never fail a run that did its work
            log.warning("could not publish run metrics", exc_info=True)
