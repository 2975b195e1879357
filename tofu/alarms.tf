# The seed's three alarms, each on the metric that means what it says:
#   errors          AWS/Lambda Errors of the function
#   schedule        AWS/Events Invocations of the drain's rule: the schedule's own deliveries.
#                   Not the function's Invocations, which GET /health probes (uptime checks)
#                   also produce: with a probe running, a dead schedule would never alarm.
#   duration        AWS/Lambda Duration against the 300 s timeout
# and the ways a scheduled drain can vanish between EventBridge and the code:
#   schedule-failed AWS/Events FailedInvocations (the invoke permission is gone, ...)
#   throttles       AWS/Lambda Throttles (reserved concurrency 0, an account limit)
#   events-dropped  AWS/Lambda AsyncEventsDropped (an event aged out or was throttled away)
# plus the backlog alarm on the queue_size metric the function logs (Embedded Metric Format).
# FunctionName without a qualifier aggregates every version, so a rollback keeps them working.

resource "aws_sns_topic" "alarms" {
  count = var.create_alarm_topic ? 1 : 0

  name              = "${var.function_name}-alarms"
  kms_master_key_id = var.alarm_topic_kms_key_id
  tags              = var.tags
}

locals {
  alarm_actions = concat(aws_sns_topic.alarms[*].arn, var.alarm_action_arns)
}

resource "aws_cloudwatch_metric_alarm" "errors" {
  alarm_name        = "${var.function_name}-errors"
  alarm_description = "More than 5 failed invocations in 10 minutes: a crash, a timeout, or a configuration error (the message names the setting). See the function's log group."

  namespace   = "AWS/Lambda"
  metric_name = "Errors"
  dimensions = {
    FunctionName = aws_lambda_function.this.function_name
  }
  statistic           = "Sum"
  period              = 600
  evaluation_periods  = 1
  threshold           = 5
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
  tags          = var.tags
}

resource "aws_cloudwatch_metric_alarm" "schedule" {
  alarm_name        = "${var.function_name}-schedule-not-firing"
  alarm_description = "The drain's EventBridge rule delivered nothing in 5 minutes although it fires every 2: the rule is disabled, deleted or broken. Counted at the schedule, so GET /health probes cannot hide it."

  namespace   = "AWS/Events"
  metric_name = "Invocations"
  # RuleName alone: a rule on the default event bus.
  dimensions = {
    RuleName = aws_cloudwatch_event_rule.schedule.name
  }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  # EventBridge publishes nothing for a rule that did not fire: silence is the failure here.
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
  alarm_description = "A run took more than 240 s of its 300 s timeout: the drain is close to being killed mid-batch."

  namespace   = "AWS/Lambda"
  metric_name = "Duration"
  dimensions = {
    FunctionName = aws_lambda_function.this.function_name
  }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 240000 # milliseconds
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
  dimensions = {
    environment = var.environment
  }
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
