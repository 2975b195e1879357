variable "region" {
  description = "Region of the artifacts bucket, the state bucket and the lock table: the region the function is deployed in (Lambda reads its code from a bucket in its own region)."
  type        = string
}

variable "github_repository" {
  description = "The repository whose workflow publishes the artifacts, as owner/name. Only its main branch may assume the publishing role."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.github_repository))
    error_message = "github_repository must be owner/name."
  }
}

variable "artifacts_bucket_name" {
  description = "Name of the bucket CI publishes the Lambda artifacts to (the AWS_LAMBDA_ARTIFACTS_BUCKET secret and the module's artifacts_bucket)."
  type        = string
}

variable "state_bucket_name" {
  description = "Name of the bucket that holds the OpenTofu state of the deployment roots."
  type        = string
}

variable "lock_table_name" {
  description = "Name of the DynamoDB table that locks the state (the s3 backend's dynamodb_table)."
  type        = string
  default     = "coc-refresh-worker-tofu-locks"
}

variable "kms_key_arn" {
  description = "Customer managed KMS key for both buckets and the lock table. null uses the AWS managed keys (aws/s3, aws/dynamodb), which need no grants."
  type        = string
  default     = null
}

variable "create_github_oidc_provider" {
  description = "Create the account's IAM OIDC provider for GitHub Actions (token.actions.githubusercontent.com). false when the account already has one: there can be only one per URL."
  type        = bool
  default     = true
}

variable "noncurrent_artifact_days" {
  description = "Days an overwritten artifact (a re-run of CI for the same commit) is kept as a noncurrent version before it is deleted."
  type        = number
  default     = 30
}

variable "artifact_expiration_days" {
  description = "Days after which the current artifacts expire. null (the default) keeps every build: what is deployed, and what may be redeployed or rolled back to, never disappears, at about 50 MB a commit for five targets. If you set it, keep it well above how long a commit stays deployed, and see plan_without_artifacts in the module's README."
  type        = number
  default     = null
}

variable "tags" {
  description = "Tags for every resource (the provider's default_tags)."
  type        = map(string)
  default     = {}
}
