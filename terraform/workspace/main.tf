# A Databricks workspace on AWS (E2, customer-managed VPC): cross-account role, root bucket, VPC with private
# subnets and a NAT gateway, and the databricks_mws_* objects that tie them together.

data "aws_availability_zones" "available" {
  state = "available"
}

locals {
  tags = merge(var.tags, { "managed-by" = "terraform", "project" = "dsmake" })
}

# --- Cross-account role: lets the Databricks control plane launch clusters in this account ---

data "databricks_aws_assume_role_policy" "this" {
  provider    = databricks.mws
  external_id = var.databricks_account_id
}

data "databricks_aws_crossaccount_policy" "this" {
  provider    = databricks.mws
  policy_type = "customer"
}

resource "aws_iam_role" "cross_account" {
  name               = "${var.prefix}-crossaccount"
  assume_role_policy = data.databricks_aws_assume_role_policy.this.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "cross_account" {
  name   = "${var.prefix}-crossaccount"
  role   = aws_iam_role.cross_account.id
  policy = data.databricks_aws_crossaccount_policy.this.json
}

resource "databricks_mws_credentials" "this" {
  provider         = databricks.mws
  credentials_name = "${var.prefix}-credentials"
  role_arn         = aws_iam_role.cross_account.arn
}

# --- Root bucket: workspace system data (DBFS root), private, encrypted, versioned ---

resource "aws_s3_bucket" "root" {
  bucket        = "${var.prefix}-workspace-root"
  force_destroy = false
  tags          = local.tags
  # checkov:skip=CKV2_AWS_62: the workspace root holds Databricks system data; nothing consumes its event notifications
  # checkov:skip=CKV_AWS_18: access logging needs a separate log bucket that this module does not own; point it at your organisation's logging bucket
  # checkov:skip=CKV_AWS_144: Databricks recreates workspace system data; cross-region replication of the root bucket is not supported by Databricks for the DBFS root
}

resource "aws_s3_bucket_lifecycle_configuration" "root" {
  bucket = aws_s3_bucket.root.id
  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
  }
}

resource "aws_s3_bucket_public_access_block" "root" {
  bucket                  = aws_s3_bucket.root.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "root" {
  bucket = aws_s3_bucket.root.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
    }
  }
}

resource "aws_s3_bucket_versioning" "root" {
  bucket = aws_s3_bucket.root.id
  versioning_configuration {
    status = "Enabled"
  }
}

data "databricks_aws_bucket_policy" "root" {
  provider = databricks.mws
  bucket   = aws_s3_bucket.root.bucket
}

resource "aws_s3_bucket_policy" "root" {
  bucket     = aws_s3_bucket.root.id
  policy     = data.databricks_aws_bucket_policy.root.json
  depends_on = [aws_s3_bucket_public_access_block.root]
}

resource "databricks_mws_storage_configurations" "this" {
  provider                   = databricks.mws
  account_id                 = var.databricks_account_id
  storage_configuration_name = "${var.prefix}-storage"
  bucket_name                = aws_s3_bucket.root.bucket
}

# --- Network: a VPC whose private subnets hold the cluster nodes, egress through one NAT gateway ---

resource "aws_vpc" "this" {
  # checkov:skip=CKV2_AWS_11: flow logs of a crawl VPC record every image download (billions of rows); enable them with your organisation's log destination when an audit needs them
  cidr_block           = var.cidr_block
  enable_dns_hostnames = true
  enable_dns_support   = true
  tags                 = merge(local.tags, { Name = "${var.prefix}-vpc" })
}

resource "aws_default_security_group" "default" {
  # The VPC's default group, closed: nothing uses it.
  vpc_id = aws_vpc.this.id
}

resource "aws_subnet" "private" {
  count             = 2
  vpc_id            = aws_vpc.this.id
  cidr_block        = cidrsubnet(var.cidr_block, 3, count.index)
  availability_zone = data.aws_availability_zones.available.names[count.index]
  tags              = merge(local.tags, { Name = "${var.prefix}-private-${count.index}" })
}

resource "aws_subnet" "public" {
  vpc_id            = aws_vpc.this.id
  cidr_block        = cidrsubnet(var.cidr_block, 3, 2)
  availability_zone = data.aws_availability_zones.available.names[0]
  tags              = merge(local.tags, { Name = "${var.prefix}-public" })
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id
  tags   = local.tags
}

resource "aws_eip" "nat" {
  domain = "vpc"
  tags   = local.tags
}

resource "aws_nat_gateway" "this" {
  allocation_id = aws_eip.nat.id
  subnet_id     = aws_subnet.public.id
  tags          = local.tags
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id
  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this.id
  }
  tags = local.tags
}

resource "aws_route_table_association" "public" {
  subnet_id      = aws_subnet.public.id
  route_table_id = aws_route_table.public.id
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.this.id
  route {
    cidr_block     = "0.0.0.0/0"
    nat_gateway_id = aws_nat_gateway.this.id
  }
  tags = local.tags
}

resource "aws_route_table_association" "private" {
  count          = 2
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

# S3 traffic (datasets, root bucket) stays on the AWS network and costs no NAT data processing.
resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.this.id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private.id]
  tags              = local.tags
}

# Cluster nodes talk to each other on every port; egress is open (package mirrors, Hugging Face, image hosts).
resource "aws_security_group" "clusters" {
  name        = "${var.prefix}-clusters"
  description = "Databricks cluster nodes"
  vpc_id      = aws_vpc.this.id
  # checkov:skip=CKV2_AWS_5: attached by Databricks to every cluster node through databricks_mws_networks below, which checkov does not follow
  tags = local.tags

  ingress {
    description = "node to node"
    from_port   = 0
    to_port     = 65535
    protocol    = "tcp"
    self        = true
  }

  ingress {
    description = "node to node (udp)"
    from_port   = 0
    to_port     = 65535
    protocol    = "udp"
    self        = true
  }

  # checkov:skip=CKV_AWS_382: cluster nodes download datasets (img2dataset crawls arbitrary image hosts) and reach the Databricks control plane; egress cannot be narrowed to fixed destinations
  egress {
    description = "downloads and the Databricks control plane"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "databricks_mws_networks" "this" {
  provider           = databricks.mws
  account_id         = var.databricks_account_id
  network_name       = "${var.prefix}-network"
  vpc_id             = aws_vpc.this.id
  subnet_ids         = aws_subnet.private[*].id
  security_group_ids = [aws_security_group.clusters.id]
}

resource "databricks_mws_workspaces" "this" {
  provider                 = databricks.mws
  account_id               = var.databricks_account_id
  workspace_name           = var.prefix
  aws_region               = var.region
  credentials_id           = databricks_mws_credentials.this.credentials_id
  storage_configuration_id = databricks_mws_storage_configurations.this.storage_configuration_id
  network_id               = databricks_mws_networks.this.network_id
}
