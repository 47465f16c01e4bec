# The demo contact centre of `make run`, declared with Terraform: two pools entitled to their
# teams, the example policies from policies/, and the sales floor's roster.
#
#   export TF_VAR_shiftdesk_token=$(shiftdesk token)     # on the control-plane host, or the
#   terraform init && terraform apply                    # token from POST /api/v1/auth/login

terraform {
  required_providers {
    restapi = {
      source  = "Mastercard/restapi"
      version = "3.0.0"
    }
  }
}

variable "shiftdesk_url" {
  description = "The control plane's API, e.g. https://shiftdesk.example:8443"
  type        = string
  default     = "https://127.0.0.1:8443"
}

variable "shiftdesk_token" {
  description = "An admin's API token (an AD admin's sign-in, or `shiftdesk token` on the host)"
  type        = string
  sensitive   = true
}

variable "shiftdesk_ca_file" {
  description = "ShiftDesk's local CA, to pin: DATA_DIR/tls/ca.pem on the control-plane host"
  type        = string
  default     = "ca.pem"
}

provider "restapi" {
  uri                  = var.shiftdesk_url
  bearer_token         = var.shiftdesk_token
  root_ca_file         = var.shiftdesk_ca_file
  write_returns_object = true
  timeout              = 30
}

locals {
  policy_dir = "${path.module}/../../../policies"
}

module "shiftdesk" {
  source = "../.."

  pools = {
    sales = {
      image    = "busybox-desktop"
      size     = 1
      max_size = 400
      groups   = ["CN=cc-sales-team,OU=Agents,OU=ShiftDesk,DC=shiftdesk,DC=test"]
    }
    support = {
      image  = "busybox-desktop"
      size   = 1
      groups = ["CN=cc-support,OU=Agents,OU=ShiftDesk,DC=shiftdesk,DC=test"]
    }
  }
  policies = { for f in fileset(local.policy_dir, "*.yaml") : trimsuffix(f, ".yaml") => file("${local.policy_dir}/${f}") }
  rosters  = { sales = file("${local.policy_dir}/rosters/sales.yaml") }
}

output "pools" {
  value = module.shiftdesk.pools
}
