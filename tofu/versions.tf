terraform {
  # OpenTofu 1.6 is the first stable OpenTofu; Terraform 1.6+ reads this module too.
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # The floor must know every runtime var.runtime allows: 5.75 still rejects python3.13
      # (hashicorp/terraform-provider-aws#40107); the releases from December 2024 on (5.80+)
      # accept it. Nothing used here is removed in 6.x.
      version = ">= 5.80, < 7.0"
    }
  }
}
