# Renders the fleet key policy of modules/kv-service offline, for terraform/tests/run.sh: the
# module's own policy module with the inputs of tests/fixtures/fleet-key-pcrs.json. The policy
# document is computed by the aws provider without any AWS call; run.sh supplies fake credentials
# in the environment and runs `terraform apply` (data sources only) and `terraform output -raw
# policy`, then lints the result and compares it with tests/fixtures/fleet-key-policy.json.

terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

provider "aws" {
  region                      = "eu-west-1"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
}

variable "inputs_file" {
  description = "JSON with instance_role_arn, admin_principal_arns and pcr_sets (tests/fixtures/fleet-key-pcrs.json)."
  type        = string
}

locals {
  inputs = jsondecode(file(var.inputs_file))
}

module "policy" {
  source = "../../modules/kv-service/modules/fleet-key-policy"

  instance_role_arn    = local.inputs.instance_role_arn
  admin_principal_arns = local.inputs.admin_principal_arns
  pcr_sets             = local.inputs.pcr_sets
}

output "policy" {
  description = "The rendered key policy (JSON)."
  value       = module.policy.json
}
