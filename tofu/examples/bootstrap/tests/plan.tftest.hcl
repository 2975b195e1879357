# `tofu test` (or `terraform test`, 1.7+): plans of the bootstrap root with a mocked AWS provider.
#   cd tofu/examples/bootstrap && tofu init -backend=false && tofu test
mock_provider "aws" {
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_iam_policy_document" {
    defaults = { json = "{}" }
  }
}
variables {
  region                = "eu-west-1"
  github_repository     = "example-org/coc-refresh-worker"
  artifacts_bucket_name = "example-artifacts"
  state_bucket_name     = "example-state"
}
run "plan" {
  command = plan
  assert {
    condition     = aws_s3_bucket_versioning.this["artifacts"].versioning_configuration[0].status == "Enabled"
    error_message = "versioning"
  }
  assert {
    condition     = local.github_subject == "repo:example-org/coc-refresh-worker:ref:refs/heads/main"
    error_message = "subject"
  }
  assert {
    condition     = length(aws_s3_bucket_lifecycle_configuration.artifacts.rule) == 1
    error_message = "lifecycle rules: no expiration by default"
  }
}
run "with_expiration" {
  command = plan
  variables {
    artifact_expiration_days = 400
  }
  assert {
    condition     = length(aws_s3_bucket_lifecycle_configuration.artifacts.rule) == 2
    error_message = "expiration rule"
  }
}
