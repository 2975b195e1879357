# Optional REST API (var.create_api). REST (v1) rather than an HTTP API because only REST APIs
# have API keys and usage plans:
#   POST /refresh  manual drain, bounded by the handler to API Gateway's 29-second limit; API key required
#   GET  /health   health from the ledger and the queue length; public unless var.health_requires_api_key
# Both are Lambda proxy integrations on the `live` alias.

locals {
  api_count = var.create_api ? 1 : 0
}

resource "aws_api_gateway_rest_api" "this" {
  count = local.api_count

  name        = var.function_name
  description = "Manual trigger and health check of the ${var.function_name} function"

  endpoint_configuration {
    types = ["REGIONAL"]
  }

  tags = var.tags

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_api_gateway_resource" "refresh" {
  count = local.api_count

  rest_api_id = aws_api_gateway_rest_api.this[0].id
  parent_id   = aws_api_gateway_rest_api.this[0].root_resource_id
  path_part   = "refresh"
}

resource "aws_api_gateway_method" "refresh_post" {
  #checkov:skip=CKV2_AWS_53:POST /refresh takes only an optional {"max_requests": N} body, which the handler validates and answers 400 when bad; the API key is enforced by api_key_required.
  count = local.api_count

  rest_api_id      = aws_api_gateway_rest_api.this[0].id
  resource_id      = aws_api_gateway_resource.refresh[0].id
  http_method      = "POST"
  authorization    = "NONE"
  api_key_required = true
}

resource "aws_api_gateway_integration" "refresh_post" {
  count = local.api_count

  rest_api_id             = aws_api_gateway_rest_api.this[0].id
  resource_id             = aws_api_gateway_resource.refresh[0].id
  http_method             = aws_api_gateway_method.refresh_post[0].http_method
  type                    = "AWS_PROXY"
  integration_http_method = "POST"
  uri                     = aws_lambda_alias.live.invoke_arn
  timeout_milliseconds    = 29000
}

resource "aws_api_gateway_resource" "health" {
  count = local.api_count

  rest_api_id = aws_api_gateway_rest_api.this[0].id
  parent_id   = aws_api_gateway_rest_api.this[0].root_resource_id
  path_part   = "health"
}

resource "aws_api_gateway_method" "health_get" {
  #checkov:skip=CKV_AWS_59:GET /health is a public, read-only status probe as the seed specifies (uptime checks call it without a key); stage throttling bounds it, and var.health_requires_api_key closes it.
  #checkov:skip=CKV2_AWS_53:GET /health takes no parameters and no body, so a request validator would have nothing to check.
  count = local.api_count

  rest_api_id      = aws_api_gateway_rest_api.this[0].id
  resource_id      = aws_api_gateway_resource.health[0].id
  http_method      = "GET"
  authorization    = "NONE"
  api_key_required = var.health_requires_api_key
}

resource "aws_api_gateway_integration" "health_get" {
  count = local.api_count

  rest_api_id             = aws_api_gateway_rest_api.this[0].id
  resource_id             = aws_api_gateway_resource.health[0].id
  http_method             = aws_api_gateway_method.health_get[0].http_method
  type                    = "AWS_PROXY"
  integration_http_method = "POST"
  uri                     = aws_lambda_alias.live.invoke_arn
  timeout_milliseconds    = 29000
}

resource "aws_api_gateway_deployment" "this" {
  count = local.api_count

  rest_api_id = aws_api_gateway_rest_api.this[0].id

  # A deployment is a snapshot: redeploy whenever a route, method or integration changes.
  triggers = {
    redeployment = sha1(jsonencode([
      aws_api_gateway_resource.refresh[0].id,
      aws_api_gateway_method.refresh_post[0],
      aws_api_gateway_integration.refresh_post[0],
      aws_api_gateway_resource.health[0].id,
      aws_api_gateway_method.health_get[0],
      aws_api_gateway_integration.health_get[0],
    ]))
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_cloudwatch_log_group" "api_access" {
  count = var.create_api && var.api_logging_enabled ? 1 : 0

  name              = "/aws/apigateway/${var.function_name}/${var.api_stage_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = var.tags
}

resource "aws_api_gateway_stage" "this" {
  #checkov:skip=CKV_AWS_120:Responses must not be cached: POST /refresh starts a drain and GET /health reports the current state.
  #checkov:skip=CKV2_AWS_29:No WAF: the API has two routes, the trigger needs an API key, and stage plus usage-plan throttling bound both. Attach a web ACL outside the module if needed.
  #checkov:skip=CKV2_AWS_51:No client certificate: the backend is a Lambda proxy integration, not an HTTP endpoint that would verify one.
  #checkov:skip=CKV2_AWS_4:Execution logging (logging_level in aws_api_gateway_method_settings) follows var.api_logging_enabled, off by default because it needs the account-level API Gateway CloudWatch role, which a single module must not own.
  count = local.api_count

  rest_api_id          = aws_api_gateway_rest_api.this[0].id
  deployment_id        = aws_api_gateway_deployment.this[0].id
  stage_name           = var.api_stage_name
  xray_tracing_enabled = var.api_xray_tracing_enabled

  dynamic "access_log_settings" {
    for_each = aws_cloudwatch_log_group.api_access
    content {
      destination_arn = access_log_settings.value.arn
      format = jsonencode({
        requestId      = "$context.requestId"
        ip             = "$context.identity.sourceIp"
        apiKeyId       = "$context.identity.apiKeyId"
        requestTime    = "$context.requestTime"
        httpMethod     = "$context.httpMethod"
        resourcePath   = "$context.resourcePath"
        status         = "$context.status"
        responseLength = "$context.responseLength"
        latencyMs      = "$context.responseLatency"
        lambdaError    = "$context.integration.error"
      })
    }
  }

  tags = var.tags
}

resource "aws_api_gateway_method_settings" "all" {
  #checkov:skip=CKV_AWS_225:Caching stays off for every method: both routes must answer from the current state.
  count = local.api_count

  rest_api_id = aws_api_gateway_rest_api.this[0].id
  stage_name  = aws_api_gateway_stage.this[0].stage_name
  method_path = "*/*"

  settings {
    # Applies to every caller, keyed or not.
    throttling_rate_limit  = var.api_throttle_rate_limit
    throttling_burst_limit = var.api_throttle_burst_limit
    metrics_enabled        = true
    logging_level          = var.api_logging_enabled ? "ERROR" : "OFF"
    caching_enabled        = false
  }
}

resource "aws_api_gateway_usage_plan" "this" {
  count = local.api_count

  name        = "${var.function_name}-manual-trigger"
  description = "Callers of POST /refresh"

  api_stages {
    api_id = aws_api_gateway_rest_api.this[0].id
    stage  = aws_api_gateway_stage.this[0].stage_name
  }

  throttle_settings {
    rate_limit  = var.usage_plan_rate_limit
    burst_limit = var.usage_plan_burst_limit
  }

  quota_settings {
    limit  = var.usage_plan_quota_per_day
    period = "DAY"
  }

  tags = var.tags
}

resource "aws_api_gateway_api_key" "this" {
  count = local.api_count

  name        = "${var.function_name}-operator"
  description = "Sent as x-api-key on POST /refresh"
  enabled     = true
  tags        = var.tags
}

resource "aws_api_gateway_usage_plan_key" "this" {
  count = local.api_count

  key_id        = aws_api_gateway_api_key.this[0].id
  key_type      = "API_KEY"
  usage_plan_id = aws_api_gateway_usage_plan.this[0].id
}

resource "aws_lambda_permission" "api" {
  count = local.api_count

  statement_id  = "AllowInvokeFromRestApi"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.this.function_name
  qualifier     = aws_lambda_alias.live.name
  principal     = "apigateway.amazonaws.com"
  # Any stage, method and path of this API only.
  source_arn = "${aws_api_gateway_rest_api.this[0].execution_arn}/*/*/*"
}
