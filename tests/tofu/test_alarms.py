"""The alarms' arithmetic, replayed on the values in tofu/alarms.tf (parsed with python-hcl2).

CloudWatch evaluates an alarm at the end of each period over its last `evaluation_periods`
datapoints and fires when `datapoints_to_alarm` of them breach. `evaluate` does the same for a
timeline of events (scheduled runs every 2 minutes at any phase, each one failed or not), so the
promises in the alarms' descriptions are checked against the numbers the module really sets:

* every run failing (raising, or halting on a systemic fault) pages within 15 minutes;
* one failed run never pages; nor does API maintenance, however long;
* the schedule alarm fires when the rule stops delivering, and not on one missing datapoint.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .test_module import HCL2_REQUIREMENT, TOFU, Module, ensure_venv, parse_tree

TICK = 120  # rate(2 minutes), checked below
PAGE_WITHIN = 15 * 60
HYPOTHESIS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class _Module(Module):
    def __repr__(self) -> str:  # hypothesis prints a failing example's arguments
        return "<the module in tofu/>"


@pytest.fixture(scope="module")
def mod() -> Module:
    return _Module.from_files("", parse_tree(ensure_venv("hcl2", HCL2_REQUIREMENT), TOFU))


def alarm(mod: Module, name: str) -> dict[str, Any]:
    """An alarm's block with every bare `${var.x}` / `${local.x}` replaced by its value."""

    def resolved(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: resolved(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolved(value) for value in node]
        return mod.resolve(node)

    return resolved(mod.resource("aws_cloudwatch_metric_alarm", name))


# ---------------------------------------------------------------------------
# A small CloudWatch
# ---------------------------------------------------------------------------

Series = Callable[[float, float], float | None]  # (start, end) of a period -> datapoint or missing


def count_of(
    events: list[tuple[float, dict[str, Any]]], where: Callable[[dict], bool], *, zero=True
) -> Series:
    """A Sum over events: 0 when events happened but none matched (a published zero), missing
    when nothing happened, or when nothing matched and `zero` is false (a metric only logged
    when it is 1, like `halted` by cause)."""

    def series(start: float, end: float) -> float | None:
        inside = [e for t, e in events if start <= t < end]
        matched = sum(1 for e in inside if where(e))
        if matched:
            return float(matched)
        return 0.0 if inside and zero else None

    return series


COMPARE = {
    "GreaterThanOrEqualToThreshold": lambda v, t: v >= t,
    "GreaterThanThreshold": lambda v, t: v > t,
    "LessThanThreshold": lambda v, t: v < t,
    "LessThanOrEqualToThreshold": lambda v, t: v <= t,
}


def expression(text: str, values: dict[str, float | None]) -> float | None:
    """The metric math the module uses: ids, `-`, `+` and FILL(id, constant)."""
    filled = re.sub(
        r"FILL\((\w+),\s*([\d.]+)\)",
        lambda m: repr(values[m[1]] if values[m[1]] is not None else float(m[2])),
        text,
    )
    names = set(re.findall(r"[A-Za-z_]\w*", filled))
    assert names <= set(values), f"unsupported metric math: {text}"
    if any(values[n] is None for n in names):
        return None  # math on a missing datapoint is missing
    return float(eval(filled, {"__builtins__": {}}, {n: values[n] for n in names}))


def evaluate(spec: dict[str, Any], metrics: dict[str, Series], until: float) -> float | None:
    """When the alarm first enters ALARM (the end of the period that decided it), or None."""
    queries = spec.get("metric_query")
    if queries:
        [returned] = [q for q in queries if q.get("return_data")]
        [period] = {q["metric"][0]["period"] for q in queries if "metric" in q}

        def datapoint(start: float) -> float | None:
            values = {q["id"]: metrics[q["id"]](start, start + period) for q in queries if "metric" in q}
            return expression(returned["expression"], values)
    else:
        period = spec["period"]

        def datapoint(start: float) -> float | None:
            return metrics[spec["metric_name"]](start, start + period)

    n = spec["evaluation_periods"]
    m = spec.get("datapoints_to_alarm", n)
    compare, threshold = COMPARE[spec["comparison_operator"]], spec["threshold"]
    missing = spec["treat_missing_data"]
    assert missing in ("breaching", "notBreaching"), "this replay knows these two"
    window: list[bool] = []
    for k in range(math.ceil(until / period)):
        value = datapoint(k * period)
        window = [*window, missing == "breaching" if value is None else compare(value, threshold)][-n:]
        if len(window) == n and sum(window) >= m:
            return (k + 1) * period
    return None


def scheduled_runs(phase: float, until: float, failed: Callable[[float], str | None]) -> list:
    """A run every 2 minutes from `phase`; `failed(t)` gives its fault (None: it went well)."""
    return [
        (t, {"fault": failed(t)}) for t in (phase + i * TICK for i in range(int((until - phase) // TICK)))
    ]


# ---------------------------------------------------------------------------
# The premises: every run is scheduled every 2 minutes and never retried
# ---------------------------------------------------------------------------


def test_the_arithmetic_rests_on_a_two_minute_schedule_without_retries(mod):
    rule = mod.resource("aws_cloudwatch_event_rule", "schedule")
    assert mod.resolve(rule["schedule_expression"]) == f"rate({TICK // 60} minutes)"
    target = mod.resource("aws_cloudwatch_event_target", "schedule")
    assert target["retry_policy"][0]["maximum_retry_attempts"] == 0
    assert mod.resource("aws_lambda_function_event_invoke_config", "live")["maximum_retry_attempts"] == 0


# ---------------------------------------------------------------------------
# Errors: every invocation fails
# ---------------------------------------------------------------------------


def errors_metrics(runs) -> dict[str, Series]:
    return {"Errors": count_of(runs, lambda e: e["fault"] == "error")}


@HYPOTHESIS
@given(phase=st.floats(0, TICK, exclude_max=True), start=st.floats(0, 3600))
def test_every_invocation_failing_for_15_minutes_pages(mod, phase, start):
    spec = alarm(mod, "errors")
    end = start + PAGE_WITHIN
    runs = scheduled_runs(phase, end + 3600, lambda t: "error" if start <= t < end else None)
    fired = evaluate(spec, errors_metrics(runs), end + 3600)
    assert fired is not None and fired <= end, (phase, start, fired)


@HYPOTHESIS
@given(phase=st.floats(0, TICK, exclude_max=True), which=st.integers(0, 40))
def test_one_failed_invocation_does_not_page(mod, phase, which):
    spec = alarm(mod, "errors")
    runs = scheduled_runs(phase, 6000, lambda t: "error" if t == phase + which * TICK else None)
    assert sum(e["fault"] == "error" for _, e in runs) == 1
    assert evaluate(spec, errors_metrics(runs), 6000) is None


# ---------------------------------------------------------------------------
# Halted: every run stops on a systemic fault, the invocation succeeds
# ---------------------------------------------------------------------------


def halted_metrics(mod, runs) -> dict[str, Series]:
    """The two EMF series the alarm reads, as worker/metrics.py logs them: `halted` 0 or 1 on
    every run, and `halted` by cause only when a run halted."""
    series = {}
    for query in alarm(mod, "halted")["metric_query"]:
        if "metric" not in query:
            continue
        metric = query["metric"][0]
        assert (metric["namespace"], metric["metric_name"], metric["stat"]) == (
            "CocRefreshWorker",
            "halted",
            "Sum",
        )
        # The function's own series (environment and FunctionName), with or without a cause.
        dimensions = str(mod.resource("aws_cloudwatch_metric_alarm", "halted")["metric_query"])
        assert "local.emf_alarm_dimensions" in dimensions
        assert set(mod.locals["emf_alarm_dimensions"]) == {"environment", "FunctionName"}
        found = re.search(r'cause\s*=\s*"?(\w+)', str(metric["dimensions"]))
        cause = found[1] if found else None
        if cause is None:
            series[query["id"]] = count_of(runs, lambda e: e["fault"] is not None)
        else:
            series[query["id"]] = count_of(runs, lambda e, c=cause: e["fault"] == c, zero=False)
    return series


@HYPOTHESIS
@given(
    phase=st.floats(0, TICK, exclude_max=True),
    start=st.floats(0, 3600),
    cause=st.sampled_from(["database_unavailable", "forbidden", "credentials", "redis_unavailable"]),
)
def test_every_run_halting_for_15_minutes_pages(mod, phase, start, cause):
    spec = alarm(mod, "halted")
    end = start + PAGE_WITHIN
    runs = scheduled_runs(phase, end + 3600, lambda t: cause if start <= t < end else None)
    fired = evaluate(spec, halted_metrics(mod, runs), end + 3600)
    assert fired is not None and fired <= end, (phase, start, fired)


@HYPOTHESIS
@given(phase=st.floats(0, TICK, exclude_max=True), which=st.integers(0, 40))
def test_one_halted_run_does_not_page(mod, phase, which):
    spec = alarm(mod, "halted")
    runs = scheduled_runs(
        phase, 6000, lambda t: "database_unavailable" if t == phase + which * TICK else None
    )
    assert evaluate(spec, halted_metrics(mod, runs), 6000) is None


@HYPOTHESIS
@given(phase=st.floats(0, TICK, exclude_max=True), start=st.floats(0, 3600))
def test_api_maintenance_never_pages_however_long(mod, phase, start):
    spec = alarm(mod, "halted")
    runs = scheduled_runs(phase, start + 4 * 3600, lambda t: "maintenance" if t >= start else None)
    assert evaluate(spec, halted_metrics(mod, runs), start + 4 * 3600) is None


def test_the_halt_causes_are_the_workers_systemic_reasons(mod):
    from coclib.reasons import Reason
    from worker.metrics import HALTING_STOPS

    systemic = list(Reason)[
        list(Reason).index(Reason.MAINTENANCE) : list(Reason).index(Reason.INTERNAL_ERROR) + 1
    ]
    assert set(mod.locals["halt_causes"]) == {r.value for r in systemic}
    assert {"circuit_open", "lease_lost", "internal_error"} == HALTING_STOPS


# ---------------------------------------------------------------------------
# The schedule: a dead rule pages, one lost datapoint does not
# ---------------------------------------------------------------------------


@HYPOTHESIS
@given(phase=st.floats(0, TICK, exclude_max=True), lost=st.integers(1, 10))
def test_one_missing_schedule_datapoint_does_not_page(mod, phase, lost):
    spec = alarm(mod, "schedule")
    period = spec["period"]
    runs = scheduled_runs(phase, 4000, lambda t: None)
    # EventBridge's metrics are best-effort: one period's datapoint never arrives.
    deliveries = count_of(runs, lambda e: True)
    metrics = {"Invocations": lambda s, e: None if s == lost * period else deliveries(s, e)}
    assert evaluate(spec, metrics, 4000) is None


@HYPOTHESIS
@given(phase=st.floats(0, TICK, exclude_max=True), dies=st.floats(600, 3600))
def test_a_schedule_that_stops_firing_pages_within_15_minutes(mod, phase, dies):
    spec = alarm(mod, "schedule")
    runs = [(t, e) for t, e in scheduled_runs(phase, 8000, lambda t: None) if t < dies]
    fired = evaluate(spec, {"Invocations": count_of(runs, lambda e: True)}, 8000)
    assert fired is not None and fired <= dies + PAGE_WITHIN


# ---------------------------------------------------------------------------
# Duration: a manual drain, which ends at its own deadline, does not trip it
# ---------------------------------------------------------------------------


def test_a_full_manual_drain_does_not_trip_the_duration_alarm(mod):
    from worker.events import DEADLINE_BUFFER_SECONDS

    spec = alarm(mod, "duration")
    timeout_ms = mod.resource("aws_lambda_function", "this")["timeout"] * 1000
    assert spec["threshold"] == "${local.timeout_ms - 2000}"  # local.duration_alarm_ms
    threshold = timeout_ms - 2000
    assert (
        mod.locals["duration_alarm_ms"] == "${local.timeout_ms - 2000}"
        and mod.locals["timeout_ms"] == timeout_ms
    )
    # A drain stops taking work DEADLINE_BUFFER_SECONDS before the timeout; its last writes and
    # housekeeping take well under the 3 s left between that and the threshold.
    longest_own_stop = timeout_ms - DEADLINE_BUFFER_SECONDS * 1000
    assert longest_own_stop + 1000 < threshold < timeout_ms
    assert spec["statistic"] == "Maximum" and spec["comparison_operator"] == "GreaterThanThreshold"


# ---------------------------------------------------------------------------
# The replay itself can fail
# ---------------------------------------------------------------------------


def test_the_replay_pages_on_one_failure_with_the_old_threshold(mod):
    """The seed's alarm (Sum > 5 over 10 minutes) can never fire on 5 runs per 10 minutes, and a
    threshold of 1 pages on one failure: the replay sees both."""
    spec = {**alarm(mod, "errors"), "period": 600, "evaluation_periods": 1, "datapoints_to_alarm": 1}
    runs = scheduled_runs(7.0, 6000, lambda t: "error" if 600 <= t < 1800 else None)
    assert (
        evaluate(
            {**spec, "threshold": 5, "comparison_operator": "GreaterThanThreshold"},
            errors_metrics(runs),
            6000,
        )
        is None
    )
    one = scheduled_runs(7.0, 6000, lambda t: "error" if t == 7.0 + 5 * TICK else None)
    assert evaluate({**spec, "threshold": 1}, errors_metrics(one), 6000) is not None
