terraform {
  # This root creates the remote state backend the other roots use, so its own state starts
  # local. After the first apply it can move in too: add the backend block that the
  # `backend_config` output prints (with another key) and run `tofu init -migrate-state`.
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80, < 7.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = var.tags
  }
}
