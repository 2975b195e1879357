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
  description = "Commit whose refresh-worker-<sha>.zip and coclib-layer-<sha>.zip to deploy."
  type        = string
}

variable "database_url" {
  description = "Postgres URI with password."
  type        = string
  sensitive   = true
}

variable "redis_url" {
  description = "Redis URL of the refresh queue."
  type        = string
  sensitive   = true
}

variable "coc_email" {
  description = "Developer-portal email (with coc_password), when no static tokens are used."
  type        = string
  default     = null
}

variable "coc_password" {
  description = "Developer-portal password."
  type        = string
  default     = null
  sensitive   = true
}

variable "coc_api_tokens" {
  description = "Static API tokens bound to the NAT gateway's Elastic IP."
  type        = list(string)
  default     = []
  sensitive   = true
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
