terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.80"
    }
    databricks = {
      source  = "databricks/databricks"
      version = "~> 1.60"
    }
  }
}

provider "aws" {
  region = var.region
}

# Workspace-level provider: authenticates like the Databricks CLI (DATABRICKS_HOST/DATABRICKS_TOKEN or a
# ~/.databrickscfg profile), against the workspace that terraform/workspace created.
provider "databricks" {
  host    = var.databricks_host
  profile = var.databricks_profile
}
