terraform {
  # OpenTofu 1.6 is the first stable OpenTofu; Terraform 1.6+ reads this module too.
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # `state` on aws_cloudwatch_event_rule and `skip_destroy` on layer versions need a
      # recent 5.x; nothing here is removed in 6.x.
      version = ">= 5.30, < 7.0"
    }
  }
}
