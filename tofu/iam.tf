# Execution role: write to its own log group; read exactly the secrets and parameters its
# settings refer to (and decrypt them with a customer key, only through those services); in a
# VPC, manage its network interfaces with the AWS managed policy AWS documents for that.
# Nothing else: Postgres, Redis and the CoC API are reached over the network, not AWS APIs.

data "aws_iam_policy_document" "assume_role" {
  statement {
    sid     = "LambdaAssumeRole"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

# IAM is global and the function regional: the region is part of the role's name, so the same
# function_name deployed in two regions of one account does not collide.
resource "aws_iam_role" "this" {
  name               = local.role_name
  description        = "Execution role of the ${var.function_name} Lambda function"
  assume_role_policy = data.aws_iam_policy_document.assume_role.json
  tags               = var.tags
}

# No logs:CreateLogGroup: the log group is created (with its retention) by this module.
data "aws_iam_policy_document" "logs" {
  statement {
    sid       = "WriteOwnLogGroup"
    effect    = "Allow"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function.arn}:*"]
  }
}

resource "aws_iam_role_policy" "logs" {
  name   = "write-own-log-group"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.logs.json
}

# Secrets by reference: GetSecretValue on exactly the given secret ARNs, GetParameter on
# exactly the given parameters, and kms:Decrypt on the customer key only via those services.
# (The AWS managed keys aws/secretsmanager and aws/ssm need no grant in the role.)
data "aws_iam_policy_document" "secrets" {
  count = length(local.secret_references) > 0 ? 1 : 0

  dynamic "statement" {
    for_each = length(local.secret_arns) > 0 ? [1] : []
    content {
      sid       = "ReadReferencedSecrets"
      effect    = "Allow"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = local.secret_arns
    }
  }

  dynamic "statement" {
    for_each = length(local.parameter_arns) > 0 ? [1] : []
    content {
      sid       = "ReadReferencedParameters"
      effect    = "Allow"
      actions   = ["ssm:GetParameter"]
      resources = local.parameter_arns
    }
  }

  dynamic "statement" {
    for_each = var.secrets_kms_key_arn != null ? [1] : []
    content {
      sid       = "DecryptThroughSecretsManagerAndSsm"
      effect    = "Allow"
      actions   = ["kms:Decrypt"]
      resources = [var.secrets_kms_key_arn]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        # Through Secrets Manager in each region a referenced secret lives in (its ARN names
        # it, and the worker reads it there), and SSM in the function's own region.
        values = sort(distinct(concat(
          [for region in local.secret_regions : "secretsmanager.${region}.amazonaws.com"],
          ["ssm.${data.aws_region.current.id}.amazonaws.com"],
        )))
      }
    }
  }
}

resource "aws_iam_role_policy" "secrets" {
  count = length(local.secret_references) > 0 ? 1 : 0

  name   = "read-referenced-secrets"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.secrets[0].json
}

# In a VPC, Lambda creates, describes and deletes the function's network interfaces through
# the role. AWS documents AWSLambdaVPCAccessExecutionRole for that (its EC2 actions on "*"):
# hand-scoping them to ARNs built from this account breaks subnets shared from another one.
resource "aws_iam_role_policy_attachment" "vpc" {
  count = local.use_vpc ? 1 : 0

  role       = aws_iam_role.this.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}
