variable "databricks_account_id" {
  description = "Your Databricks account ID (Account console → top right). Not a secret."
  type        = string
}

variable "region" {
  description = "AWS region of the workspace, its VPC and root bucket (keep data buckets in the same region)."
  type        = string
  default     = "us-west-2"
}

variable "prefix" {
  description = "Name prefix for every resource (lowercase letters, digits, dashes)."
  type        = string
  default     = "dsmake"
}

variable "cidr_block" {
  description = "CIDR of the workspace VPC; two private subnets (clusters) and one public subnet (NAT) are cut from it."
  type        = string
  default     = "10.4.0.0/16"
}

variable "tags" {
  description = "Tags added to every AWS resource."
  type        = map(string)
  default     = {}
}
