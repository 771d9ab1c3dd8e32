terraform {
  # 1.5: check blocks, and the validation/precondition features this module uses.
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}
