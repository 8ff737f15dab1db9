variable "databricks_host" {
  description = "The workspace URL (terraform/workspace's `databricks_host` output)."
  type        = string
}

variable "databricks_profile" {
  description = "A ~/.databrickscfg profile for the workspace (`dsmake remote login -p NAME` writes one); null uses DATABRICKS_TOKEN."
  type        = string
  default     = null
}

variable "region" {
  description = "AWS region of the workspace and the data bucket."
  type        = string
  default     = "us-west-2"
}

variable "prefix" {
  description = "Name prefix for every resource."
  type        = string
  default     = "dsmake"
}

variable "cross_account_role_name" {
  description = "Name of the workspace's cross-account role (terraform/workspace: `<prefix>-crossaccount`); it is allowed to pass the instance profile's role."
  type        = string
  default     = "dsmake-crossaccount"
}

variable "data_bucket" {
  description = "The S3 bucket that holds datasets (the dsmake store). Created here unless create_data_bucket is false."
  type        = string
}

variable "create_data_bucket" {
  description = "Create the data bucket (private, encrypted, versioned); false to use an existing one."
  type        = bool
  default     = true
}

variable "store_prefix" {
  description = "Key prefix of the dsmake store inside the data bucket."
  type        = string
  default     = "datasets"
}

variable "gpu_node_types" {
  description = "GPU node types the GPU cluster policy allows (g5 for CLIP inference; p4d for large runs)."
  type        = list(string)
  default     = ["g5.4xlarge", "g5.12xlarge", "p4d.24xlarge"]
}

variable "gpu_max_workers" {
  description = "Upper bound on GPU workers per cluster under the policy (a cost guard)."
  type        = number
  default     = 8
}

variable "hf_token" {
  description = "Hugging Face token for gated datasets, stored in the secret scope (pass with TF_VAR_hf_token; never commit it). Empty: no secret."
  type        = string
  default     = ""
  sensitive   = true
}

variable "tags" {
  description = "Tags added to every AWS resource."
  type        = map(string)
  default     = {}
}
