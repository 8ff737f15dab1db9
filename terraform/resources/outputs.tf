output "store_url" {
  description = "The dsmake store: the remote file's [store] url."
  value       = "s3://${var.data_bucket}/${var.store_prefix}"
}

output "region" {
  description = "The AWS region of the data bucket."
  value       = var.region
}

output "instance_profile_arn" {
  description = "The instance profile that cluster nodes run as (reads and writes the data bucket)."
  value       = databricks_instance_profile.data_access.instance_profile_arn
}

output "cpu_policy_id" {
  description = "Cluster policy for the CPU (download) clusters."
  value       = databricks_cluster_policy.cpu.id
}

output "gpu_policy_id" {
  description = "Cluster policy for the GPU (CLIP) clusters."
  value       = databricks_cluster_policy.gpu.id
}

output "hf_token_secret" {
  description = "A secret reference (not the token) for spark_env_vars: HF_TOKEN = this."
  value       = "{{secrets/${databricks_secret_scope.dsmake.name}/hf_token}}"
}

output "aws_account_id" {
  description = "The AWS account the resources are in."
  value       = data.aws_caller_identity.current.account_id
}
