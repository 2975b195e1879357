output "function_name" {
  description = "Name of the Lambda function."
  value       = module.refresh_worker.function_name
}

output "alias_arn" {
  description = "ARN of the live alias."
  value       = module.refresh_worker.alias_arn
}

output "live_version" {
  description = "Version the live alias points at."
  value       = module.refresh_worker.live_version
}

output "published_version" {
  description = "Version this apply published."
  value       = module.refresh_worker.published_version
}

output "api_url" {
  description = "Base URL of the API stage."
  value       = module.refresh_worker.api_url
}

output "api_key_id" {
  description = "ID of the API key for POST /refresh."
  value       = module.refresh_worker.api_key_id
}

output "api_key_value" {
  description = "Value of the API key for POST /refresh."
  value       = module.refresh_worker.api_key_value
  sensitive   = true
}

output "log_group_name" {
  description = "Log group of the function."
  value       = module.refresh_worker.log_group_name
}

output "alarm_topic_arn" {
  description = "SNS topic of the alarms."
  value       = module.refresh_worker.alarm_topic_arn
}

output "schedule_rule_name" {
  description = "EventBridge rule of the drain schedule."
  value       = module.refresh_worker.schedule_rule_name
}

output "dashboard_name" {
  description = "CloudWatch dashboard of the worker."
  value       = module.refresh_worker.dashboard_name
}

output "artifact_target" {
  description = "Target the deployed artifacts were built for."
  value       = module.refresh_worker.artifact_target
}
