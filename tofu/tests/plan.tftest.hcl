# `tofu test` (or `terraform test`, 1.7+): plans of this module with a mocked AWS provider, offline
# once `tofu init` has the provider. They show what the static tests in tests/tofu cannot: that
# a plan really stops on missing artifacts, and really plans a rollback without them.
#   cd tofu && tofu init -backend=false && tofu test
mock_provider "aws" {
  mock_data "aws_region" {
    defaults = { id = "eu-west-1", name = "eu-west-1" }
  }
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{}" }
  }
  mock_data "aws_s3_objects" {
    defaults = { keys = [] }
  }
}

variables {
  environment             = "production"
  artifacts_bucket        = "coc-artifacts"
  commit_sha              = "0123456789abcdef0123456789abcdef01234567"
  database_url_secret_arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:coc/db-AbCdEf"
  redis_url               = "redis://cache:6379/0"
  coc_api_tokens          = ["token"]
  secrets_kms_key_arn     = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
}

run "expired_artifacts_stop_a_normal_plan" {
  command         = plan
  expect_failures = [data.aws_s3_object.manifest]
}

run "rollback_and_schedule_off_plan_without_artifacts" {
  command = plan
  variables {
    plan_without_artifacts = true
    schedule_enabled       = false
    live_version           = "7"
  }
  assert {
    condition     = length(data.aws_s3_object.manifest) == 0 && length(data.aws_s3_objects.artifacts) == 0
    error_message = "the plan read S3"
  }
  assert {
    condition     = aws_cloudwatch_event_rule.schedule.state == "DISABLED" && aws_lambda_alias.live.function_version == "7"
    error_message = "rollback values not planned"
  }
  assert {
    condition     = aws_iam_role.this.name == "coc-refresh-worker-eu-west-1-exec"
    error_message = "role name: ${aws_iam_role.this.name}"
  }
  assert {
    condition     = length(aws_lambda_invocation.migrate) == 1 && jsondecode(aws_lambda_invocation.migrate[0].input).action == "migrate"
    error_message = "no migrate invocation"
  }
  assert {
    condition     = contains(local.secret_regions, "us-east-1")
    error_message = "secret region: ${jsonencode(local.secret_regions)}"
  }
}
