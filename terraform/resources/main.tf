# What dsmake's Databricks runs need inside the workspace: the data bucket and an instance profile that
# reaches it, cluster policies (GPU clusters bounded in size and node type), and a secret scope for HF_TOKEN.

locals {
  tags = merge(var.tags, { "managed-by" = "terraform", "project" = "dsmake" })
}

data "aws_caller_identity" "current" {}

# --- The data bucket (the dsmake store) ---

resource "aws_s3_bucket" "data" {
  count  = var.create_data_bucket ? 1 : 0
  bucket = var.data_bucket
  tags   = local.tags
  # checkov:skip=CKV_AWS_144: datasets are rebuilt from their sources by dsmake; cross-region replication would double storage for data that is reproducible
  # checkov:skip=CKV_AWS_18: access logging needs a separate log bucket that this module does not own; enable it with your organisation's logging bucket
  # checkov:skip=CKV2_AWS_62: no consumer of bucket event notifications; dsmake lists manifests instead
  # The four settings below are made by the aws_s3_bucket_* resources that follow; checkov does not follow
  # their count-indexed references (aws_s3_bucket.data[0]):
  # checkov:skip=CKV2_AWS_6: public access block: aws_s3_bucket_public_access_block.data
  # checkov:skip=CKV_AWS_145: KMS encryption: aws_s3_bucket_server_side_encryption_configuration.data
  # checkov:skip=CKV_AWS_21: versioning: aws_s3_bucket_versioning.data
  # checkov:skip=CKV2_AWS_61: lifecycle: aws_s3_bucket_lifecycle_configuration.data
}

resource "aws_s3_bucket_public_access_block" "data" {
  count                   = var.create_data_bucket ? 1 : 0
  bucket                  = aws_s3_bucket.data[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "data" {
  count  = var.create_data_bucket ? 1 : 0
  bucket = aws_s3_bucket.data[0].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "data" {
  count  = var.create_data_bucket ? 1 : 0
  bucket = aws_s3_bucket.data[0].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "data" {
  count  = var.create_data_bucket ? 1 : 0
  bucket = aws_s3_bucket.data[0].id
  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    # Multipart uploads of killed workers (dsmake gc --uploads does the same on demand).
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }
}

# --- Instance profile: the role cluster nodes run as, with access to the data bucket only ---

data "aws_iam_policy_document" "assume_ec2" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "data_access" {
  name               = "${var.prefix}-data-access"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json
  tags               = local.tags
}

data "aws_iam_policy_document" "data_access" {
  statement {
    sid       = "ListTheBucket"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
    resources = ["arn:aws:s3:::${var.data_bucket}"]
  }
  statement {
    sid = "ReadWriteObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["arn:aws:s3:::${var.data_bucket}/*"]
  }
}

resource "aws_iam_role_policy" "data_access" {
  name   = "${var.prefix}-data-access"
  role   = aws_iam_role.data_access.id
  policy = data.aws_iam_policy_document.data_access.json
}

resource "aws_iam_instance_profile" "data_access" {
  name = "${var.prefix}-data-access"
  role = aws_iam_role.data_access.name
  tags = local.tags
}

# The workspace's cross-account role may hand this role to the nodes it launches.
data "aws_iam_policy_document" "pass_role" {
  statement {
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.data_access.arn]
  }
}

resource "aws_iam_role_policy" "pass_role" {
  name   = "${var.prefix}-pass-data-access"
  role   = var.cross_account_role_name
  policy = data.aws_iam_policy_document.pass_role.json
}

resource "databricks_instance_profile" "data_access" {
  instance_profile_arn = aws_iam_instance_profile.data_access.arn
  depends_on           = [aws_iam_role_policy.pass_role]
}

# --- Cluster policies: CPU clusters for downloads, GPU clusters (bounded) for CLIP ---

resource "databricks_cluster_policy" "cpu" {
  name = "${var.prefix}-cpu"
  definition = jsonencode({
    "aws_attributes.instance_profile_arn" = { type = "fixed", value = aws_iam_instance_profile.data_access.arn }
    "aws_attributes.availability"         = { type = "fixed", value = "SPOT_WITH_FALLBACK" }
    "autoscale.max_workers"               = { type = "range", maxValue = 20 }
    "autotermination_minutes"             = { type = "fixed", value = 30, hidden = true }
  })
}

resource "databricks_cluster_policy" "gpu" {
  name = "${var.prefix}-gpu"
  definition = jsonencode({
    "node_type_id"                              = { type = "allowlist", values = var.gpu_node_types }
    "spark_version"                             = { type = "regex", pattern = ".*-gpu-ml-.*" }
    "aws_attributes.instance_profile_arn"       = { type = "fixed", value = aws_iam_instance_profile.data_access.arn }
    "aws_attributes.availability"               = { type = "fixed", value = "SPOT_WITH_FALLBACK" }
    "aws_attributes.first_on_demand"            = { type = "fixed", value = 1 }
    "autoscale.max_workers"                     = { type = "range", maxValue = var.gpu_max_workers }
    "num_workers"                               = { type = "range", maxValue = var.gpu_max_workers }
    "spark_conf.spark.task.resource.gpu.amount" = { type = "fixed", value = "1" }
  })
}

# --- Secrets: HF_TOKEN reaches clusters as {{secrets/<scope>/hf_token}}, never as a value in a run ---

resource "databricks_secret_scope" "dsmake" {
  name = var.prefix
}

resource "databricks_secret" "hf_token" {
  count        = var.hf_token == "" ? 0 : 1
  scope        = databricks_secret_scope.dsmake.name
  key          = "hf_token"
  string_value = var.hf_token
}
