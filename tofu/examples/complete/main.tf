# A root module that deploys everything the seed describes: the function from CI's artifacts,
# its schedule, the API with its key, alarms mailed to an operator, the dashboard, secrets read
# from Secrets Manager at cold start, and (when subnets are given) VPC access.

module "refresh_worker" {
  source = "../.."

  function_name = "coc-refresh-worker-${var.environment}"
  environment   = var.environment
  runtime       = var.runtime
  architecture  = var.architecture

  # CI uploads refresh-worker-<sha>-<target>.zip, coclib-layer-<sha>-<target>.zip and their
  # manifest here; the plan stops if runtime or architecture is not what was built.
  artifacts_bucket = var.artifacts_bucket
  commit_sha       = var.commit_sha

  # Secrets by reference: the function reads them at cold start; only the ARNs are in its
  # configuration and in this state.
  database_url_secret_arn   = var.database_url_secret_arn
  redis_url_secret_arn      = var.redis_url_secret_arn
  coc_api_tokens_secret_arn = var.coc_api_tokens_secret_arn
  coc_email                 = var.coc_email
  coc_password_secret_arn   = var.coc_password_secret_arn
  secrets_kms_key_arn       = var.secrets_kms_key_arn

  # Rollback handles: the schedule switch and the alias pin.
  schedule_enabled = var.schedule_enabled
  live_version     = var.live_version

  subnet_ids         = var.subnet_ids
  security_group_ids = var.security_group_ids

  create_api = true

  create_alarm_topic      = true
  alarm_topic_kms_key_id  = var.alarm_topic_kms_key_id
  backlog_alarm_threshold = 500
  create_dashboard        = true

  ledger_retention_days = var.ledger_retention_days

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
