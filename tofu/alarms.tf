# Alarms, each on the metric that means what it says:
#   errors          AWS/Lambda Errors of the function: every drain fails (raises, times out)
#   halted          the worker's own `halted` metric: every drain stops on a systemic fault
#                   (Postgres down, a rotated password, a refused key, a missing migration)
#                   although the invocation succeeds, which no Lambda metric can see
#   schedule        AWS/Events Invocations of the drain's rule: the schedule's own deliveries.
#                   Not the function's Invocations, which GET /health probes (uptime checks)
#                   also produce: with a probe running, a dead schedule would never alarm.
#   duration        AWS/Lambda Duration: a run that did not stop at its own deadline
# and the ways a scheduled drain can vanish between EventBridge and the code:
#   schedule-failed AWS/Events FailedInvocations (the invoke permission is gone, ...)
#   throttles       AWS/Lambda Throttles (reserved concurrency 0, an account limit)
#   events-dropped  AWS/Lambda AsyncEventsDropped (an event aged out or was throttled away)
# plus the backlog alarm on the queue_size metric the function logs (Embedded Metric Format).
# FunctionName without a qualifier aggregates every version, so a rollback keeps them working.
#
# The arithmetic of "every run fails" (errors, halted). rate(2 minutes) puts 2 or 3 scheduled
# runs in every 5-minute period, whatever its phase, and retries are off (schedule.tf): so when
# every run fails each period counts at least 2, and 2 such periods in a row page. The first
# whole period starts less than 5 minutes after the failures do, so the page comes within
# 5 + 2 x 5 = 15 minutes. One failed run puts 1 in one period (no page); even a few in a row
# breach at most one period. tests/tofu/test_alarms.py replays both against these values.

resource "aws_sns_topic" "alarms" {
  count = var.create_alarm_topic ? 1 : 0

  name              = "${var.function_name}-alarms"
  kms_master_key_id = var.alarm_topic_kms_key_id
  tags              = var.tags
}

locals {
  alarm_actions = concat(aws_sns_topic.alarms[*].arn, var.alarm_action_arns)

  # "Every run fails": at least 2 in each of 2 consecutive 5-minute periods (see above).
  every_run_period     = 300
  every_run_periods    = 2
  every_run_per_period = 2

  # Why a run halts (`cause`, coclib.reasons' systemic codes). `maintenance` is the API's own
  # downtime: the requests wait and nothing can be done, so it does not page.
  halt_causes = ["maintenance", "forbidden", "throttled", "credentials", "login", "api_down", "database_unavailable", "redis_unavailable", "redis_wrong_type", "redis_out_of_memory", "redis_read_only", "lease_lost", "internal_error"]
  emf_alarm_dimensions = {
    environment  = var.environment
    FunctionName = var.function_name
  }
}

resource "aws_cloudwatch_metric_alarm" "errors" {
  alarm_name        = "${var.function_name}-errors"
  alarm_description = "Invocations keep failing: at least 2 failed invocations in each of 2 consecutive 5-minute periods, i.e. every scheduled drain for 10 minutes (a crash, a timeout, or a configuration error whose message names the setting). One failed run does not fire it. See the function's log group."

  namespace   = "AWS/Lambda"
  metric_name = "Errors"
  dimensions = {
    FunctionName = aws_lambda_function.this.function_name
  }
  statistic           = "Sum"
  period              = local.every_run_period
  evaluation_periods  = local.every_run_periods
  datapoints_to_alarm = local.every_run_periods
  threshold           = local.every_run_per_period
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
  tags          = var.tags
}

resource "aws_cloudwatch_metric_alarm" "halted" {
  alarm_name        = "${var.function_name}-halted"
  alarm_description = "Drains keep halting on a systemic fault although the invocations succeed: at least 2 runs in each of 2 consecutive 5-minute periods stopped circuit_open (Postgres or Redis unreachable, a rotated password, the API key refused, a missing migration), lease_lost or internal_error. The run summaries (and the metric's cause dimension) say why; API maintenance does not count. One halted run does not fire it."

  # Every halted run, less those halted by API maintenance (the same metric with its cause).
  metric_query {
    id = "halted"
    metric {
      namespace   = "CocRefreshWorker"
      metric_name = "halted"
      dimensions  = local.emf_alarm_dimensions
      period      = local.every_run_period
      stat        = "Sum"
    }
  }
  metric_query {
    id = "maintenance"
    metric {
      namespace   = "CocRefreshWorker"
      metric_name = "halted"
      dimensions  = merge(local.emf_alarm_dimensions, { cause = "maintenance" })
      period      = local.every_run_period
      stat        = "Sum"
    }
  }
  metric_query {
    id          = "paging"
    label       = "runs halted on a fault other than API maintenance"
    expression  = "halted - FILL(maintenance, 0)"
    return_data = true
  }

  evaluation_periods  = local.every_run_periods
  datapoints_to_alarm = local.every_run_periods
  threshold           = local.every_run_per_period
  comparison_operator = "GreaterThanOrEqualToThreshold"
  # No runs, no data: the schedule, throttles and events-dropped alarms cover that.
  treat_missing_data = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
  tags          = var.tags
}

resource "aws_cloudwatch_metric_alarm" "schedule" {
  alarm_name        = "${var.function_name}-schedule-not-firing"
  alarm_description = "The drain's EventBridge rule delivered nothing in 2 consecutive 5-minute periods although it fires every 2 minutes: the rule is disabled, deleted or broken. Counted at the schedule, so GET /health probes cannot hide it; one missing datapoint (EventBridge metrics are best-effort) does not fire it."

  namespace   = "AWS/Events"
  metric_name = "Invocations"
  # RuleName alone: a rule on the default event bus.
  dimensions = {
    RuleName = aws_cloudwatch_event_rule.schedule.name
  }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 2
  datapoints_to_alarm = 2
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  # EventBridge publishes nothing for a rule that did not fire: silence is the failure here.
  # Two periods in a row: its metrics are best-effort, and one lost datapoint is not a dead rule.
  treat_missing_data = "breaching"

  # Disabling the schedule on purpose (rollback step 1) should not page anyone.
  actions_enabled = var.schedule_enabled
  alarm_actions   = local.alarm_actions
  ok_actions      = local.alarm_actions
  tags            = var.tags
}

resource "aws_cloudwatch_metric_alarm" "schedule_failed" {
  alarm_name        = "${var.function_name}-schedule-failed"
  alarm_description = "EventBridge could not invoke the function for the drain's rule (the invoke permission or the live alias is missing, or Lambda refused the event): scheduled drains are not starting."

  namespace   = "AWS/Events"
  metric_name = "FailedInvocations"
  dimensions = {
    RuleName = aws_cloudwatch_event_rule.schedule.name
  }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  # Published only when not zero.
  treat_missing_data = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
  tags          = var.tags
}

resource "aws_cloudwatch_metric_alarm" "throttles" {
  alarm_name        = "${var.function_name}-throttles"
  alarm_description = "Lambda throttled invocations of the function (reserved concurrency 0 or too low, or the account's concurrency is used up): a throttled scheduled drain does not run."

  namespace   = "AWS/Lambda"
  metric_name = "Throttles"
  dimensions = {
    FunctionName = aws_lambda_function.this.function_name
  }
  statistic           = "Sum"
  period              = 600
  evaluation_periods  = 1
  threshold           = var.throttles_alarm_threshold
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
  tags          = var.tags
}

resource "aws_cloudwatch_metric_alarm" "async_events_dropped" {
  alarm_name        = "${var.function_name}-events-dropped"
  alarm_description = "Lambda dropped scheduled events without running them (older than async_max_event_age_seconds, usually after throttling): drains were skipped."

  namespace   = "AWS/Lambda"
  metric_name = "AsyncEventsDropped"
  dimensions = {
    FunctionName = aws_lambda_function.this.function_name
  }
  statistic           = "Sum"
  period              = 600
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
  tags          = var.tags
}

resource "aws_cloudwatch_metric_alarm" "duration" {
  alarm_name        = "${var.function_name}-duration"
  alarm_description = "An invocation ran past the drain's own end: a drain stops taking work 5 s before the 300 s timeout (a full manual drain ends near 295 s), so one that reaches 298 s did not stop in time and is being, or was, killed mid-batch."

  namespace   = "AWS/Lambda"
  metric_name = "Duration"
  dimensions = {
    FunctionName = aws_lambda_function.this.function_name
  }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = local.duration_alarm_ms # milliseconds
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
  tags          = var.tags
}

resource "aws_cloudwatch_metric_alarm" "backlog" {
  alarm_name        = "${var.function_name}-backlog"
  alarm_description = "The refresh queue stayed above ${var.backlog_alarm_threshold} requests: the worker is not keeping up (rate limit, open circuit, deadline) or is not draining."

  namespace   = "CocRefreshWorker"
  metric_name = "queue_size"
  dimensions  = local.emf_alarm_dimensions
  # The smallest queue length seen in a period: one busy moment does not fire it.
  statistic           = "Minimum"
  period              = 300
  evaluation_periods  = var.backlog_alarm_evaluation_periods
  threshold           = var.backlog_alarm_threshold
  comparison_operator = "GreaterThanThreshold"
  # No data means no run; the schedule, throttles and events-dropped alarms cover that.
  treat_missing_data = "missing"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
  tags          = var.tags
}
