output "function_name" {
  description = "Name of the Lambda function."
  value       = aws_lambda_function.this.function_name
}

output "function_arn" {
  description = "Unqualified ARN of the Lambda function."
  value       = aws_lambda_function.this.arn
}

output "published_version" {
  description = "Version published by this apply (the `live` alias points here unless live_version pins it)."
  value       = aws_lambda_function.this.version
}

output "alias_arn" {
  description = "ARN of the `live` alias, which the schedule and the API invoke."
  value       = aws_lambda_alias.live.arn
}

output "live_version" {
  description = "Version the `live` alias points at."
  value       = aws_lambda_alias.live.function_version
}

output "layer_version_arn" {
  description = "ARN of the coclib layer version the function uses; null when use_layer is false."
  value       = one(aws_lambda_layer_version.coclib[*].arn)
}

output "role_arn" {
  description = "ARN of the function's execution role."
  value       = aws_iam_role.this.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the function (`aws logs tail <name> --follow`)."
  value       = aws_cloudwatch_log_group.function.name
}

output "schedule_rule_name" {
  description = "Name of the EventBridge rule that runs the drain."
  value       = aws_cloudwatch_event_rule.schedule.name
}

output "api_url" {
  description = "Invoke URL of the API stage (append /health or /refresh); null without the API."
  value       = one(aws_api_gateway_stage.this[*].invoke_url)
}

output "api_key_id" {
  description = "ID of the API key for POST /refresh; read its value with `aws apigateway get-api-key --api-key <id> --include-value`. null without the API."
  value       = one(aws_api_gateway_api_key.this[*].id)
}

output "api_key_value" {
  description = "Value of the API key for POST /refresh (sensitive); null without the API."
  value       = one(aws_api_gateway_api_key.this[*].value)
  sensitive   = true
}

output "alarm_topic_arn" {
  description = "ARN of the SNS topic the alarms notify; null unless create_alarm_topic."
  value       = one(aws_sns_topic.alarms[*].arn)
}

output "alarm_names" {
  description = "Names of the CloudWatch alarms, by purpose."
  value = {
    errors               = aws_cloudwatch_metric_alarm.errors.alarm_name
    halted               = aws_cloudwatch_metric_alarm.halted.alarm_name
    schedule             = aws_cloudwatch_metric_alarm.schedule.alarm_name
    schedule_failed      = aws_cloudwatch_metric_alarm.schedule_failed.alarm_name
    duration             = aws_cloudwatch_metric_alarm.duration.alarm_name
    throttles            = aws_cloudwatch_metric_alarm.throttles.alarm_name
    async_events_dropped = aws_cloudwatch_metric_alarm.async_events_dropped.alarm_name
    backlog              = aws_cloudwatch_metric_alarm.backlog.alarm_name
  }
}

output "dashboard_name" {
  description = "Name of the CloudWatch dashboard; null unless create_dashboard."
  value       = one(aws_cloudwatch_dashboard.this[*].dashboard_name)
}

output "artifact_target" {
  description = "The target the deployed artifacts were built for, from their manifest (\"python3.11-x86_64\")."
  value       = try(local.manifest.target, null)
}

output "artifact_lock_sha256" {
  description = "sha256 of the requirements.lock the deployed dependencies came from, from the manifest."
  value       = try(local.manifest.lock_sha256, null)
}
