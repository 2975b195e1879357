# The function, its coclib layer, the `live` alias everything invokes, and its log group.

resource "aws_cloudwatch_log_group" "function" {
  #checkov:skip=CKV_AWS_338:Operational logs kept var.log_retention_days (30 by default). The lasting audit record is the outcome ledger in Postgres, not these logs.
  name              = local.log_group_name
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = var.tags
}

resource "aws_lambda_layer_version" "coclib" {
  count = var.use_layer ? 1 : 0

  layer_name  = "${var.function_name}-coclib"
  description = "coclib and the worker's Python dependencies, built by package-lambda.sh"

  s3_bucket        = local.use_s3_artifacts ? var.artifacts_bucket : null
  s3_key           = local.use_s3_artifacts ? local.layer_s3_key : null
  filename         = local.use_s3_artifacts ? null : var.layer_zip_path
  source_code_hash = local.use_s3_artifacts ? null : filebase64sha256(var.layer_zip_path)

  compatible_runtimes      = [var.runtime]
  compatible_architectures = [var.architecture]

  # Keep superseded layer versions: an older function version that the `live` alias can be
  # rolled back to still names the layer version it was published with.
  skip_destroy = true

  lifecycle {
    precondition {
      condition     = local.use_s3_artifacts ? var.commit_sha != null : var.layer_zip_path != null
      error_message = "Set artifacts_bucket and commit_sha (deploy CI's coclib-layer-<sha>.zip), or layer_zip_path (a local zip)."
    }
  }
}

resource "aws_lambda_function" "this" {
  #checkov:skip=CKV_AWS_50:X-Ray tracing would need xray:PutTraceSegments on the role, which is kept to logs only; each request's path is recorded in the outcome ledger and the run summary.
  #checkov:skip=CKV_AWS_116:No dead-letter queue on purpose: scheduled events are not retried (a fresh one comes every 2 minutes), and every dequeued request already ends in a ledger row, failures included.
  #checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile the CI pipeline does not have; the zips come from the CI-owned artifacts bucket, addressed by commit SHA.
  function_name = var.function_name
  description   = "Drains Clash of Clans refresh requests from Redis into Postgres (${var.environment})"
  role          = aws_iam_role.this.arn

  handler       = "lambda_function.lambda_handler"
  runtime       = var.runtime
  architectures = [var.architecture]
  memory_size   = var.memory_size
  timeout       = 300

  # Every apply that changes code or configuration publishes a numbered version, so the
  # `live` alias can be pointed back at the previous one.
  publish = true

  reserved_concurrent_executions = var.reserved_concurrency

  s3_bucket        = local.use_s3_artifacts ? var.artifacts_bucket : null
  s3_key           = local.use_s3_artifacts ? local.function_s3_key : null
  filename         = local.use_s3_artifacts ? null : var.function_zip_path
  source_code_hash = local.use_s3_artifacts ? null : filebase64sha256(var.function_zip_path)

  layers = aws_lambda_layer_version.coclib[*].arn

  kms_key_arn = var.kms_key_arn

  environment {
    variables = local.environment_variables
  }

  dynamic "vpc_config" {
    for_each = local.use_vpc ? [1] : []
    content {
      subnet_ids         = var.subnet_ids
      security_group_ids = var.security_group_ids
    }
  }

  tags = var.tags

  # The log group must exist first: the role may not create it. In a VPC, Lambda checks the
  # ENI permissions while it creates the function.
  depends_on = [
    aws_cloudwatch_log_group.function,
    aws_iam_role_policy.logs,
    aws_iam_role_policy.vpc,
  ]

  lifecycle {
    precondition {
      condition     = local.use_s3_artifacts ? var.commit_sha != null : var.function_zip_path != null
      error_message = "Set artifacts_bucket and commit_sha (deploy CI's refresh-worker-<sha>.zip), or function_zip_path (a local zip)."
    }
    precondition {
      condition     = local.has_coc_credentials
      error_message = "Give the CoC API credentials: coc_email with coc_password, or coc_api_tokens."
    }
    precondition {
      condition     = (length(var.subnet_ids) == 0) == (length(var.security_group_ids) == 0)
      error_message = "Give subnet_ids and security_group_ids together, or neither."
    }
  }
}

resource "aws_lambda_alias" "live" {
  name             = local.alias_name
  description      = "Invoked by the schedule and the API. Roll back by pointing it at an earlier version (var.live_version)."
  function_name    = aws_lambda_function.this.function_name
  function_version = var.live_version != null ? var.live_version : aws_lambda_function.this.version
}

# Scheduled events arrive asynchronously. A retried or long-queued event would only wait
# behind the Redis lease of the run that is already draining, so neither is kept.
resource "aws_lambda_function_event_invoke_config" "live" {
  function_name                = aws_lambda_function.this.function_name
  qualifier                    = aws_lambda_alias.live.name
  maximum_retry_attempts       = 0
  maximum_event_age_in_seconds = var.async_max_event_age_seconds
}
