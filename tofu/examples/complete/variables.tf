variable "region" {
  description = "AWS region to deploy to."
  type        = string
  default     = "eu-west-1"
}

variable "environment" {
  description = "production, staging or development."
  type        = string
  default     = "production"
}

variable "runtime" {
  description = "Lambda Python runtime; must match the version the zips were built for."
  type        = string
  default     = "python3.11"
}

variable "architecture" {
  description = "x86_64 or arm64; must match the zips."
  type        = string
  default     = "x86_64"
}

variable "artifacts_bucket" {
  description = "The bucket CI uploads to (AWS_LAMBDA_ARTIFACTS_BUCKET)."
  type        = string
}

variable "commit_sha" {
  description = "Commit whose artifacts (refresh-worker-<sha>-<target>.zip and the rest) to deploy."
  type        = string
}

variable "database_url_secret_arn" {
  description = "Full ARN of the Secrets Manager secret holding the Postgres URI (password included)."
  type        = string
}

variable "redis_url_secret_arn" {
  description = "Full ARN of the Secrets Manager secret holding the Redis URL of the refresh queue (with the ElastiCache user's password)."
  type        = string
}

variable "coc_api_tokens_secret_arn" {
  description = "Full ARN of the secret holding the static API tokens (comma-separated) bound to the NAT gateway's Elastic IP, or null."
  type        = string
  default     = null
}

variable "coc_email" {
  description = "Developer-portal email (with coc_password_secret_arn), when no static tokens are used."
  type        = string
  default     = null
}

variable "coc_password_secret_arn" {
  description = "Full ARN of the secret holding the developer-portal password, or null."
  type        = string
  default     = null
}

variable "secrets_kms_key_arn" {
  description = "Customer managed KMS key of those secrets, or null for the AWS managed key."
  type        = string
  default     = null
}

variable "ledger_retention_days" {
  description = "Days of outcome ledger kept (null keeps everything)."
  type        = number
  default     = 30
}

variable "schedule_enabled" {
  description = "false stops the scheduled drains (rollback step 1)."
  type        = bool
  default     = true
}

variable "live_version" {
  description = "Pin the live alias to an earlier version number (rollback step 3); null follows each apply."
  type        = string
  default     = null
}

variable "subnet_ids" {
  description = "Private subnets with a NAT gateway route; empty runs the function outside a VPC."
  type        = list(string)
  default     = []
}

variable "security_group_ids" {
  description = "Security groups for the function when subnet_ids is set."
  type        = list(string)
  default     = []
}

variable "alarm_topic_kms_key_id" {
  description = "Customer managed KMS key for the alarm topic, or null."
  type        = string
  default     = null
}

variable "alarm_email" {
  description = "Address subscribed to the alarm topic (AWS mails a confirmation link first), or null."
  type        = string
  default     = null
}
