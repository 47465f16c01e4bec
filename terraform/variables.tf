variable "pools" {
  description = <<-EOT
    Desktop pools by name (2-24 of a-z 0-9 -). `groups` are the pool's entitlements: the AD groups
    (full DN or SID) whose members may use it. memory_mib, vcpus and memory_sharing cannot change in
    place: changing one replaces the pool. size is where the pool starts; a roster, an admin or the
    scheduler may move it afterwards, and image moves belong to rollouts (`shiftdesk pool rollout`),
    so remote changes to size and image are not reverted.
  EOT
  type = map(object({
    image          = string
    size           = optional(number, 0)
    min_size       = optional(number, 0)
    max_size       = optional(number, 50)
    memory_mib     = optional(number, 256)
    vcpus          = optional(number, 1)
    clone          = optional(string, "instant")
    memory_sharing = optional(bool, true)
    groups         = optional(list(string), [])
  }))
  default = {}
}

variable "policies" {
  description = "Policies by name: each the YAML text of one policy (policies/README.md), usually file(...). The text must name the same policy."
  type        = map(string)
  default     = {}
}

variable "rosters" {
  description = "Rosters by pool name: each the YAML text of that pool's roster (policies/rosters/). The text must name the same pool."
  type        = map(string)
  default     = {}
}
