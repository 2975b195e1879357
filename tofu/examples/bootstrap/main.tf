# What an infra team sets up once, before the first deploy of the refresh worker:
#   the artifacts bucket   versioned, encrypted, private, TLS only; a lifecycle that keeps every
#                          current build (what is deployed, and what a rollback needs) and
#                          deletes only overwritten versions and abandoned uploads
#   the publishing role    assumed by GitHub Actions through OIDC, only from the main branch of
#                          one repository, allowed to put objects in that bucket and nothing else
#   remote state           a versioned, encrypted state bucket and a DynamoDB lock table for the
#                          s3 backend of the deployment roots (examples/complete)

data "aws_partition" "current" {}

data "aws_caller_identity" "current" {}

locals {
  sse_algorithm  = "aws:kms"
  github_oidc    = "token.actions.githubusercontent.com"
  github_subject = "repo:${var.github_repository}:ref:refs/heads/main"
  oidc_provider_arn = var.create_github_oidc_provider ? aws_iam_openid_connect_provider.github[0].arn : (
    "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:oidc-provider/${local.github_oidc}"
  )
  buckets = {
    artifacts = aws_s3_bucket.artifacts
    state     = aws_s3_bucket.state
  }
}

# ---------------------------------------------------------------------------
# Buckets
# ---------------------------------------------------------------------------

resource "aws_s3_bucket" "artifacts" {
  #checkov:skip=CKV_AWS_18:Access logging needs a separate log bucket; uploads come from one CI role and reads from tofu plans, both in CloudTrail.
  #checkov:skip=CKV_AWS_144:Cross-region replication is not needed: every artifact can be rebuilt from its commit with package-lambda.sh.
  #checkov:skip=CKV2_AWS_62:Nothing reacts to uploads: tofu reads the artifacts when someone plans a deploy, so no event notifications.
  bucket = var.artifacts_bucket_name
}

resource "aws_s3_bucket" "state" {
  #checkov:skip=CKV_AWS_18:Access logging needs a separate log bucket; the state is read and written by tofu runs, which CloudTrail records.
  #checkov:skip=CKV_AWS_144:Cross-region replication of the state is left to the team; versioning already keeps every earlier state.
  #checkov:skip=CKV2_AWS_62:Nothing reacts to state writes, so the bucket sends no event notifications to anyone.
  bucket = var.state_bucket_name
}

resource "aws_s3_bucket_versioning" "this" {
  for_each = local.buckets

  bucket = each.value.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  for_each = local.buckets

  bucket = each.value.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = local.sse_algorithm
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each = local.buckets

  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  for_each = local.buckets

  bucket = each.value.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

data "aws_iam_policy_document" "tls_only" {
  for_each = local.buckets

  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [each.value.arn, "${each.value.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "tls_only" {
  for_each = local.buckets

  bucket = each.value.id
  policy = data.aws_iam_policy_document.tls_only[each.key].json

  depends_on = [aws_s3_bucket_public_access_block.this]
}

# Artifacts are addressed by commit SHA and never overwritten except by a re-run of the same
# commit's workflow: only those overwritten (noncurrent) versions and abandoned multipart uploads
# are deleted. Current builds stay, unless artifact_expiration_days says otherwise, so a plan of
# the deployed commit, a rollback to an earlier one and `schedule_enabled = false` always find
# their manifest. Builds older than 30 days move to Standard-IA, still read at once by a plan.
resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    id     = "keep-builds-drop-overwritten-versions"
    status = "Enabled"
    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_artifact_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
    transition {
      days          = 30
      storage_class = "STANDARD_IA"
    }
  }

  dynamic "rule" {
    for_each = var.artifact_expiration_days != null ? [var.artifact_expiration_days] : []
    content {
      id     = "expire-old-builds"
      status = "Enabled"
      filter {}

      expiration {
        days = rule.value
      }
      abort_incomplete_multipart_upload {
        days_after_initiation = 7
      }
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

resource "aws_s3_bucket_lifecycle_configuration" "state" {
  bucket = aws_s3_bucket.state.id

  rule {
    id     = "keep-a-year-of-earlier-states"
    status = "Enabled"
    filter {}

    noncurrent_version_expiration {
      noncurrent_days = 365
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.this]
}

# ---------------------------------------------------------------------------
# State locking
# ---------------------------------------------------------------------------

resource "aws_dynamodb_table" "locks" {
  name         = var.lock_table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "LockID"

  attribute {
    name = "LockID"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }

  deletion_protection_enabled = true
}

# ---------------------------------------------------------------------------
# GitHub Actions: OIDC, a role for the main branch only
# ---------------------------------------------------------------------------

resource "aws_iam_openid_connect_provider" "github" {
  count = var.create_github_oidc_provider ? 1 : 0

  url            = "https://${local.github_oidc}"
  client_id_list = ["sts.amazonaws.com"]
  # IAM verifies GitHub's certificate through its own trusted CAs; older providers still
  # require a value here. These are GitHub's published intermediate thumbprints.
  thumbprint_list = ["6938fd4d98bab03faadb97b34396831e3780aea1", "1c58a3a8518e8759bf075b76b750d4f2df264fcd"]
}

data "aws_iam_policy_document" "github_trust" {
  statement {
    sid     = "GitHubMainBranchOnly"
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [local.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.github_oidc}:aud"
      values   = ["sts.amazonaws.com"]
    }

    # Exactly the main branch of this repository: not a pull request, another branch, a tag
    # or an environment (StringEquals, no wildcard).
    condition {
      test     = "StringEquals"
      variable = "${local.github_oidc}:sub"
      values   = [local.github_subject]
    }
  }
}

resource "aws_iam_role" "github_publish" {
  name                 = "${substr(replace(var.github_repository, "/", "-"), 0, 40)}-publish-${var.region}"
  description          = "GitHub Actions (${var.github_repository}, main) uploads the refresh worker's Lambda artifacts"
  assume_role_policy   = data.aws_iam_policy_document.github_trust.json
  max_session_duration = 3600
}

data "aws_iam_policy_document" "github_publish" {
  statement {
    sid    = "PutArtifacts"
    effect = "Allow"
    # PutObject covers single and multipart uploads; the layer (~10 MB) is sent in parts.
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.artifacts.arn}/*"]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn != null ? [1] : []
    content {
      sid       = "EncryptArtifacts"
      effect    = "Allow"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = [var.kms_key_arn]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["s3.${var.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "github_publish" {
  name   = "put-lambda-artifacts"
  role   = aws_iam_role.github_publish.id
  policy = data.aws_iam_policy_document.github_publish.json
}
