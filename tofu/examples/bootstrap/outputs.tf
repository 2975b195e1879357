output "artifacts_bucket" {
  description = "The artifacts bucket: the repository secret AWS_LAMBDA_ARTIFACTS_BUCKET and the module's artifacts_bucket."
  value       = aws_s3_bucket.artifacts.id
}

output "github_role_arn" {
  description = "The role the workflow's publish job assumes: the repository secret AWS_LAMBDA_ARTIFACTS_ROLE_ARN."
  value       = aws_iam_role.github_publish.arn
}

output "state_bucket" {
  description = "The bucket for the deployment roots' state."
  value       = aws_s3_bucket.state.id
}

output "lock_table" {
  description = "The DynamoDB table that locks the state."
  value       = aws_dynamodb_table.locks.name
}

output "backend_config" {
  description = "The backend block for a deployment root (examples/complete): paste it into its versions.tf and run `tofu init`."
  value       = <<-EOT
    terraform {
      backend "s3" {
        bucket         = "${aws_s3_bucket.state.id}"
        key            = "coc-refresh-worker/production.tfstate"
        region         = "${var.region}"
        dynamodb_table = "${aws_dynamodb_table.locks.name}"
        encrypt        = true
      }
    }
  EOT
}
