# Shared values. The resources live in files named after what they hold:
#   lambda.tf       function, coclib layer, `live` alias, async invoke settings, log group
#   iam.tf          execution role and its two inline policies
#   schedule.tf     EventBridge rule, target and invoke permission
#   api_gateway.tf  optional REST API: POST /refresh, GET /health, usage plan, API key
#   alarms.tf       CloudWatch alarms and the optional SNS topic

data "aws_partition" "current" {}

data "aws_caller_identity" "current" {}

locals {
  # Where the code comes from: CI's artifacts bucket (the usual case) or local zips.
  use_s3_artifacts = var.artifacts_bucket != null

  # package-lambda.sh builds dist/refresh-worker-<sha>.zip and dist/coclib-layer-<sha>.zip;
  # CI uploads both to the artifacts bucket under these keys. (The seed's
  # `filename = "s3://..."` cannot work: `filename` only takes a local path.)
  # Locals are always evaluated, and a null cannot be interpolated: hence the guard.
  function_s3_key = var.commit_sha != null ? "refresh-worker-${var.commit_sha}.zip" : null
  layer_s3_key    = var.commit_sha != null ? "coclib-layer-${var.commit_sha}.zip" : null

  use_vpc = length(var.subnet_ids) > 0 && length(var.security_group_ids) > 0

  alias_name     = "live"
  log_group_name = "/aws/lambda/${var.function_name}"

  # The function's settings. Optional credentials are left out rather than set empty, so the
  # worker's own check ("one of the two credential forms") sees exactly what was configured.
  environment_variables = merge(
    {
      DATABASE_URL      = var.database_url
      REDIS_URL         = var.redis_url
      ENVIRONMENT       = var.environment
      LOG_LEVEL         = var.log_level
      COC_API_BASE_URL  = var.coc_api_base_url
      COC_REQS_PER_SEC  = tostring(var.coc_reqs_per_sec)
      REFRESH_QUEUE_KEY = var.refresh_queue_key
      PYTHONPATH        = "/var/task:/opt/python"
    },
    var.coc_email != null ? { COC_EMAIL = var.coc_email } : {},
    var.coc_password != null ? { COC_PASSWORD = var.coc_password } : {},
    length(var.coc_api_tokens) > 0 ? { COC_API_TOKENS = join(",", var.coc_api_tokens) } : {},
    var.ledger_retention_days != null ? { LEDGER_RETENTION_DAYS = tostring(var.ledger_retention_days) } : {}
  )

  has_coc_credentials = (var.coc_email != null && var.coc_password != null) || length(var.coc_api_tokens) > 0
}
