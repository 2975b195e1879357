# Shared values. The resources live in files named after what they hold:
#   artifacts.tf    the build's manifest (S3 or local): target, zip hashes, lock hash
#   lambda.tf       function, coclib layer, `live` alias, async invoke settings, log group
#   iam.tf          execution role: logs, secrets by reference, VPC access
#   schedule.tf     EventBridge rule, target and invoke permission
#   api_gateway.tf  optional REST API: POST /refresh, GET /health, usage plan, API key
#   alarms.tf       CloudWatch alarms and the optional SNS topic
#   dashboard.tf    the optional CloudWatch dashboard

data "aws_partition" "current" {}

data "aws_caller_identity" "current" {}

data "aws_region" "current" {}

locals {
  # Where the code comes from: CI's artifacts bucket (the usual case) or local zips.
  use_s3_artifacts = var.artifacts_bucket != null

  # What the zips must have been built for: package-lambda.sh --python X.Y --arch A names its
  # artifacts with the same "python3.11-x86_64". CI uploads them to the artifacts bucket under
  # these keys. (The seed's `filename = "s3://..."` cannot work: `filename` only takes a local
  # path.) Locals are always evaluated, and a null cannot be interpolated: hence the guards.
  target          = "${var.runtime}-${var.architecture}"
  artifact_prefix = var.commit_sha != null ? "refresh-worker-${var.commit_sha}-" : null
  function_s3_key = var.commit_sha != null ? "refresh-worker-${var.commit_sha}-${local.target}.zip" : null
  layer_s3_key    = var.commit_sha != null ? "coclib-layer-${var.commit_sha}-${local.target}.zip" : null
  manifest_s3_key = var.commit_sha != null ? "refresh-worker-${var.commit_sha}-${local.target}.json" : null

  use_vpc = length(var.subnet_ids) > 0 && length(var.security_group_ids) > 0

  alias_name = "live"
  # <function_name>-<region>-exec, within IAM's 64 characters (function_name is at most 48).
  role_name      = "${substr(var.function_name, 0, min(length(var.function_name), 64 - length("--exec") - length(data.aws_region.current.id)))}-${data.aws_region.current.id}-exec"
  log_group_name = "/aws/lambda/${var.function_name}"

  # Secret settings given by reference: each becomes NAME_SECRET_ARN or NAME_PARAMETER in the
  # function's environment (the value never does), and the role may read exactly these.
  secret_references = {
    for name, ref in {
      DATABASE_URL_SECRET_ARN   = var.database_url_secret_arn
      DATABASE_URL_PARAMETER    = var.database_url_parameter
      REDIS_URL_SECRET_ARN      = var.redis_url_secret_arn
      REDIS_URL_PARAMETER       = var.redis_url_parameter
      COC_PASSWORD_SECRET_ARN   = var.coc_password_secret_arn
      COC_PASSWORD_PARAMETER    = var.coc_password_parameter
      COC_API_TOKENS_SECRET_ARN = var.coc_api_tokens_secret_arn
      COC_API_TOKENS_PARAMETER  = var.coc_api_tokens_parameter
    } : name => ref if ref != null
  }
  secret_arns = sort([for name, ref in local.secret_references : ref if endswith(name, "_SECRET_ARN")])
  # arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME; the function's region when none is referenced.
  secret_regions = distinct(concat([for arn in local.secret_arns : split(":", arn)[3]], [data.aws_region.current.id]))
  parameter_arns = sort([
    for name, ref in local.secret_references :
    "arn:${data.aws_partition.current.partition}:ssm:${data.aws_region.current.id}:${data.aws_caller_identity.current.account_id}:parameter/${trimprefix(ref, "/")}"
    if endswith(name, "_PARAMETER")
  ])

  # Exactly one source for DATABASE_URL and REDIS_URL; at most one for the password and for the tokens.
  database_url_sources   = length(compact([var.database_url != null ? "v" : "", var.database_url_secret_arn != null ? "v" : "", var.database_url_parameter != null ? "v" : ""]))
  redis_url_sources      = length(compact([var.redis_url != null ? "v" : "", var.redis_url_secret_arn != null ? "v" : "", var.redis_url_parameter != null ? "v" : ""]))
  coc_password_sources   = length(compact([var.coc_password != null ? "v" : "", var.coc_password_secret_arn != null ? "v" : "", var.coc_password_parameter != null ? "v" : ""]))
  coc_api_tokens_sources = length(compact([length(var.coc_api_tokens) > 0 ? "v" : "", var.coc_api_tokens_secret_arn != null ? "v" : "", var.coc_api_tokens_parameter != null ? "v" : ""]))

  # The function's settings. Optional credentials are left out rather than set empty, so the
  # worker's own check ("one of the two credential forms") sees exactly what was configured.
  environment_variables = merge(
    {
      ENVIRONMENT          = var.environment
      LOG_LEVEL            = var.log_level
      COC_API_BASE_URL     = var.coc_api_base_url
      COC_REQS_PER_SEC     = tostring(var.coc_reqs_per_sec)
      REFRESH_QUEUE_KEY    = var.refresh_queue_key
      DRAIN_LINGER_SECONDS = tostring(var.drain_linger_seconds)
      FRESHNESS            = var.freshness ? "on" : "off"
      PYTHONPATH           = "/var/task:/opt/python"
    },
    var.database_url != null ? { DATABASE_URL = var.database_url } : {},
    var.redis_url != null ? { REDIS_URL = var.redis_url } : {},
    var.coc_email != null ? { COC_EMAIL = var.coc_email } : {},
    var.coc_password != null ? { COC_PASSWORD = var.coc_password } : {},
    length(var.coc_api_tokens) > 0 ? { COC_API_TOKENS = join(",", var.coc_api_tokens) } : {},
    local.secret_references,
    var.ledger_retention_days != null ? { LEDGER_RETENTION_DAYS = tostring(var.ledger_retention_days) } : {},
    var.redis_cluster != null ? { REDIS_CLUSTER = tostring(var.redis_cluster) } : {}
  )

  has_coc_credentials = (var.coc_email != null && local.coc_password_sources == 1) || local.coc_api_tokens_sources == 1
}
