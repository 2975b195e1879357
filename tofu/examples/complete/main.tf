# A root module that deploys everything the seed describes: the function from CI's artifacts,
# its schedule, the API with its key, alarms mailed to an operator, and (when subnets are
# given) VPC access.

module "refresh_worker" {
  source = "../.."

  function_name = "coc-refresh-worker-${var.environment}"
  environment   = var.environment
  runtime       = var.runtime
  architecture  = var.architecture

  # CI uploads refresh-worker-<sha>.zip and coclib-layer-<sha>.zip here.
  artifacts_bucket = var.artifacts_bucket
  commit_sha       = var.commit_sha

  database_url   = var.database_url
  redis_url      = var.redis_url
  coc_email      = var.coc_email
  coc_password   = var.coc_password
  coc_api_tokens = var.coc_api_tokens

  # Rollback handles: the schedule switch and the alias pin.
  schedule_enabled = var.schedule_enabled
  live_version     = var.live_version

  subnet_ids         = var.subnet_ids
  security_group_ids = var.security_group_ids

  create_api = true

  create_alarm_topic      = true
  alarm_topic_kms_key_id  = var.alarm_topic_kms_key_id
  backlog_alarm_threshold = 500

  tags = {
    Owner = "platform"
  }
}

resource "aws_sns_topic_subscription" "alarm_email" {
  count = var.alarm_email != null ? 1 : 0

  topic_arn = module.refresh_worker.alarm_topic_arn
  protocol  = "email"
  endpoint  = var.alarm_email
}
