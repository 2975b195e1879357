# The drain schedule. Rollback step 1 ("disable the trigger") is `schedule_enabled = false`.

resource "aws_cloudwatch_event_rule" "schedule" {
  name                = "${var.function_name}-schedule"
  description         = "Runs the ${var.function_name} drain"
  schedule_expression = var.schedule_expression
  state               = var.schedule_enabled ? "ENABLED" : "DISABLED"
  tags                = var.tags
}

resource "aws_cloudwatch_event_target" "schedule" {
  rule      = aws_cloudwatch_event_rule.schedule.name
  target_id = "refresh-worker-live"
  arn       = aws_lambda_alias.live.arn

  # EventBridge's own delivery retries: none, and no long wait either.
  retry_policy {
    maximum_retry_attempts       = 0
    maximum_event_age_in_seconds = var.async_max_event_age_seconds
  }
}

resource "aws_lambda_permission" "schedule" {
  statement_id  = "AllowInvokeFromScheduleRule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.this.function_name
  qualifier     = aws_lambda_alias.live.name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.schedule.arn
}
