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

  s3_bucket = local.use_s3_artifacts ? var.artifacts_bucket : null
  s3_key    = local.use_s3_artifacts ? local.layer_s3_key : null
  filename  = local.use_s3_artifacts ? null : var.layer_zip_path
  # A different zip (even under the same S3 key) is a new layer version.
  source_code_hash = local.use_s3_artifacts ? try(local.manifest.layer.base64sha256, null) : filebase64sha256(var.layer_zip_path)

  compatible_runtimes      = [var.runtime]
  compatible_architectures = [var.architecture]

  # Keep superseded layer versions: an older function version that the `live` alias can be
  # rolled back to still names the layer version it was published with.
  skip_destroy = true

  lifecycle {
    precondition {
      condition     = local.use_s3_artifacts ? var.commit_sha != null : var.layer_zip_path != null
      error_message = "Set artifacts_bucket and commit_sha (deploy CI's coclib-layer-<sha>-<target>.zip), or layer_zip_path (a local zip)."
    }
    precondition {
      condition     = local.use_s3_artifacts || var.layer_zip_path == null || try(filebase64sha256(var.layer_zip_path) == local.manifest.layer.base64sha256, false)
      error_message = "layer_zip_path is not the layer zip its manifest describes: rebuild with ./package-lambda.sh, which writes both."
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

  s3_bucket = local.use_s3_artifacts ? var.artifacts_bucket : null
  s3_key    = local.use_s3_artifacts ? local.function_s3_key : null
  filename  = local.use_s3_artifacts ? null : var.function_zip_path
  # From the manifest for S3 (a rebuilt zip under the same key is redeployed), from the file
  # itself for a local zip.
  source_code_hash = local.use_s3_artifacts ? try(local.manifest.function.base64sha256, null) : filebase64sha256(var.function_zip_path)

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
    aws_iam_role_policy.secrets,
    aws_iam_role_policy_attachment.vpc,
  ]

  lifecycle {
    precondition {
      condition     = local.use_s3_artifacts ? var.commit_sha != null : var.function_zip_path != null
      error_message = "Set artifacts_bucket and commit_sha (deploy CI's refresh-worker-<sha>-<target>.zip), or function_zip_path (a local zip)."
    }
    # The manifest says what the zips were built for; Lambda would accept any zip and fail at
    # import, so the plan stops here instead.
    precondition {
      condition     = local.manifest == null || try(local.manifest.runtime == var.runtime && local.manifest.architecture == var.architecture, false)
      error_message = "The artifacts were built for ${try(local.manifest.target, "?")}, but runtime = \"${var.runtime}\" and architecture = \"${var.architecture}\". Build for ${local.target} (./package-lambda.sh --python ${trimprefix(var.runtime, "python")} --arch ${var.architecture}, or the workflow's matrix), or set runtime and architecture to what was built."
    }
    precondition {
      condition     = local.manifest == null || try((local.manifest.layer != null) == var.use_layer, false)
      error_message = "use_layer = ${var.use_layer}, but the artifacts were built ${try(local.manifest.layer, null) == null ? "with --single-zip (no layer): set use_layer = false" : "with a layer: set use_layer = true"}."
    }
    precondition {
      condition     = local.manifest != null || !local.read_artifacts
      error_message = "The manifest refresh-worker-${coalesce(var.commit_sha, "<sha>")}-${local.target}.json has no readable body: upload it with --content-type application/json, as the workflow does."
    }
    precondition {
      condition     = local.use_s3_artifacts || var.function_zip_path == null || try(filebase64sha256(var.function_zip_path) == local.manifest.function.base64sha256, false)
      error_message = "function_zip_path is not the zip its manifest (${coalesce(local.manifest_path, "?")}) describes: rebuild with ./package-lambda.sh, which writes both, or set manifest_path."
    }
    precondition {
      condition     = local.database_url_sources == 1
      error_message = "Give the database URL exactly one way: database_url_secret_arn, database_url_parameter or database_url."
    }
    precondition {
      condition     = local.redis_url_sources == 1
      error_message = "Give the Redis URL exactly one way: redis_url_secret_arn, redis_url_parameter or redis_url."
    }
    precondition {
      condition     = local.coc_password_sources <= 1 && local.coc_api_tokens_sources <= 1
      error_message = "Give the CoC password and the API tokens one way each: a plain value, a *_secret_arn or a *_parameter."
    }
    precondition {
      condition     = local.has_coc_credentials
      error_message = "Give the CoC API credentials: coc_email with a password (coc_password, coc_password_secret_arn or coc_password_parameter), or API tokens (coc_api_tokens, coc_api_tokens_secret_arn or coc_api_tokens_parameter)."
    }
    precondition {
      condition     = (length(var.subnet_ids) == 0) == (length(var.security_group_ids) == 0)
      error_message = "Give subnet_ids and security_group_ids together, or neither."
    }
  }
}

# Migrations are part of the deploy: each published version applies the schema once (a new
# version, a new invocation), before the `live` alias, and with it the schedule and the API,
# moves to it. A migration that fails fails the apply, and `live` stays where it was. The
# worker's migrations only add (see the README, Migrations), so the version still live keeps
# working on the new schema meanwhile, and after a rollback.
resource "aws_lambda_invocation" "migrate" {
  count = var.migrate_on_deploy ? 1 : 0

  function_name = aws_lambda_function.this.function_name
  qualifier     = aws_lambda_function.this.version
  input         = jsonencode({ action = "migrate" })

  triggers = {
    version = aws_lambda_function.this.version
  }
}

resource "aws_lambda_alias" "live" {
  name             = local.alias_name
  description      = "Invoked by the schedule and the API. Roll back by pointing it at an earlier version (var.live_version)."
  function_name    = aws_lambda_function.this.function_name
  function_version = var.live_version != null ? var.live_version : aws_lambda_function.this.version

  # The schema first: the schedule never runs a version whose migrations were not applied.
  depends_on = [aws_lambda_invocation.migrate]
}

# Scheduled events arrive asynchronously. A retried or long-queued event would only wait
# behind the Redis lease of the run that is already draining, so neither is kept.
resource "aws_lambda_function_event_invoke_config" "live" {
  function_name                = aws_lambda_function.this.function_name
  qualifier                    = aws_lambda_alias.live.name
  maximum_retry_attempts       = 0
  maximum_event_age_in_seconds = var.async_max_event_age_seconds
}
