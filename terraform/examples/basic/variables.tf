variable "region" {
  description = "AWS region to deploy into (the AMI's SSM parameter must exist there)."
  type        = string
}

variable "environment" {
  description = "Environment name, e.g. demo."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the deployment."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets of the instances."
  type        = list(string)
}

variable "public_subnet_ids" {
  description = "Public subnets of the internet-facing load balancer."
  type        = list(string)
}

variable "vpc_cidr_block" {
  description = "CIDR of the VPC: the instances reach the VPC's interface endpoints on 443."
  type        = string
}

variable "s3_gateway_prefix_list_id" {
  description = "Prefix list of the VPC's S3 gateway endpoint (pl-...)."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate of the service's DNS name."
  type        = string
}

variable "ami_ssm_parameter" {
  description = "SSM parameter the packager wrote with the AMI id (packaging ami ... --ssm-parameter)."
  type        = string
}

variable "data_bucket_name" {
  description = "S3 bucket with the data files."
  type        = string
}

variable "amp_workspace_id" {
  description = "Amazon Managed Prometheus workspace id, or empty."
  type        = string
  default     = ""
}

variable "bundle_manifest_path" {
  description = "Path of the bundle's manifest.json (dist/aws/manifest.json); its PCRs bind the KMS key."
  type        = string
  default     = null
}
