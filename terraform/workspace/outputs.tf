output "databricks_host" {
  description = "The workspace URL: `dsmake remote login --host` and the remote file's `host`."
  value       = databricks_mws_workspaces.this.workspace_url
}

output "workspace_id" {
  description = "The workspace's numeric ID."
  value       = databricks_mws_workspaces.this.workspace_id
}

output "region" {
  description = "The AWS region of the workspace."
  value       = var.region
}

output "cross_account_role_arn" {
  description = "The role that the Databricks control plane assumes; terraform/resources registers instance profiles that it may pass."
  value       = aws_iam_role.cross_account.arn
}
