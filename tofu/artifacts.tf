# The build's manifest, written by package-lambda.sh beside the zips and uploaded by CI:
#   {"target": "python3.11-x86_64", "runtime": ..., "architecture": ..., "lock_sha256": ...,
#    "function": {"file", "sha256", "base64sha256", "bytes"}, "layer": {...} | null, ...}
# It is how a plan knows what the zips were built for (a python3.11 layer does not load on
# python3.12: its psycopg-binary and orjson are compiled for one CPython and one glibc), and
# when they changed (base64sha256 is source_code_hash's format, so a rebuilt zip under the
# same key is redeployed).

# plan_without_artifacts skips both reads: a plan then depends on no S3 object, so rollback
# and disabling the schedule keep working after the deployed commit's artifacts expired.
locals {
  read_artifacts = local.use_s3_artifacts && var.commit_sha != null && !var.plan_without_artifacts
}

# Which targets CI built for this commit, to name them when the wanted one is missing.
data "aws_s3_objects" "artifacts" {
  count = local.read_artifacts ? 1 : 0

  bucket = var.artifacts_bucket
  prefix = local.artifact_prefix
}

locals {
  built_targets = sort([
    for key in try(data.aws_s3_objects.artifacts[0].keys, []) :
    trimsuffix(trimprefix(key, local.artifact_prefix), ".json") if endswith(key, ".json")
  ])
  manifest_path = var.manifest_path != null ? var.manifest_path : (
    var.function_zip_path != null ? replace(var.function_zip_path, "/\\.zip$/", ".json") : null
  )
}

data "aws_s3_object" "manifest" {
  count = local.read_artifacts ? 1 : 0

  bucket = var.artifacts_bucket
  key    = local.manifest_s3_key

  lifecycle {
    # Checked before the read, so a missing target is this message rather than "not found".
    precondition {
      condition     = contains(local.built_targets, local.target)
      error_message = "No build of commit ${var.commit_sha} for ${local.target} in s3://${var.artifacts_bucket}/ (built: ${length(local.built_targets) > 0 ? join(", ", local.built_targets) : "none"}). Add ${local.target} to the workflow's build matrix (or run ./package-lambda.sh --python ${trimprefix(var.runtime, "python")} --arch ${var.architecture} and upload the three files), or set runtime and architecture to a target that was built. If this commit is the one deployed and its artifacts have expired, set plan_without_artifacts = true to plan from what is deployed (rollback, disabling the schedule)."
    }
  }
}

locals {
  # CI uploads the manifest as application/json, so the data source returns its body.
  manifest_json = local.use_s3_artifacts ? try(data.aws_s3_object.manifest[0].body, null) : (
    local.manifest_path != null ? file(local.manifest_path) : null
  )
  manifest = local.manifest_json != null ? jsondecode(local.manifest_json) : null
}
