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

# Account-level provider: creates the workspace. Authenticate with DATABRICKS_CLIENT_ID/DATABRICKS_CLIENT_SECRET
# (an account service principal), never with values committed here.
provider "databricks" {
  alias      = "mws"
  host       = "https://accounts.cloud.databricks.com"
  account_id = var.databricks_account_id
}
