# The seed's three alarms on the function's AWS/Lambda metrics, plus a backlog alarm on the
# queue_size metric the function logs in Embedded Metric Format.
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

resource "aws_cloudwatch_metric_alarm" "no_invocations" {
  alarm_name        = "${var.function_name}-no-invocations"
  alarm_description = "No invocation in 5 minutes although the schedule is every 2: the rule is disabled or broken, or the invoke permission is missing."

  namespace   = "AWS/Lambda"
  metric_name = "Invocations"
  dimensions = {
    FunctionName = aws_lambda_function.this.function_name
  }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  # Lambda publishes nothing for a function that never ran: silence is the failure here.
  treat_missing_data = "breaching"

  # Disabling the schedule on purpose (rollback step 1) should not page anyone.
  actions_enabled = var.schedule_enabled
  alarm_actions   = local.alarm_actions
  ok_actions      = local.alarm_actions
  tags            = var.tags
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
  # No data means no run; the no-invocations alarm covers that.
  treat_missing_data = "missing"

  alarm_actions = local.alarm_actions
  ok_actions    = local.alarm_actions
  tags          = var.tags
}
