# Execution role: write to its own log group, and (only in a VPC) manage its network
# interfaces. Nothing else: the function talks to Postgres, Redis and the CoC API over the
# network with credentials from its environment, not through AWS APIs.

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

resource "aws_iam_role" "this" {
  name               = "${var.function_name}-exec"
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

locals {
  ec2_arn_prefix = "arn:${data.aws_partition.current.partition}:ec2:*:${data.aws_caller_identity.current.account_id}"
}

# What AWSLambdaVPCAccessExecutionRole grants, scoped to the given subnets and security
# groups where EC2 supports resource-level permissions.
data "aws_iam_policy_document" "vpc" {
  count = local.use_vpc ? 1 : 0

  statement {
    sid       = "DescribeNetwork"
    effect    = "Allow"
    actions   = ["ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"]
    resources = ["*"]
  }

  statement {
    sid     = "CreateInterfacesInGivenSubnets"
    effect  = "Allow"
    actions = ["ec2:CreateNetworkInterface"]
    resources = concat(
      ["${local.ec2_arn_prefix}:network-interface/*"],
      [for id in var.subnet_ids : "${local.ec2_arn_prefix}:subnet/${id}"],
      [for id in var.security_group_ids : "${local.ec2_arn_prefix}:security-group/${id}"]
    )
  }

  statement {
    sid    = "ManageOwnInterfaces"
    effect = "Allow"
    actions = [
      "ec2:DeleteNetworkInterface",
      "ec2:AssignPrivateIpAddresses",
      "ec2:UnassignPrivateIpAddresses",
    ]
    resources = ["${local.ec2_arn_prefix}:network-interface/*"]
  }
}

resource "aws_iam_role_policy" "vpc" {
  count = local.use_vpc ? 1 : 0

  name   = "manage-vpc-interfaces"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.vpc[0].json
}
