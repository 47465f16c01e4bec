# ShiftDesk's pools, policies, rosters and pool entitlements as restapi_object resources against
# its REST API (/api/v1). The provider block (URL, admin token, pinned CA) belongs to the caller:
# see examples/contact-centre. Each object reads back exactly what is written here, so a plan
# after an apply is empty unless someone changed ShiftDesk by other means.

resource "restapi_object" "pool" {
  for_each = var.pools

  path         = "/api/v1/pools"
  id_attribute = "name"
  data = jsonencode({
    name           = each.key
    image          = each.value.image
    size           = each.value.size
    min_size       = each.value.min_size
    max_size       = each.value.max_size
    memory_mib     = each.value.memory_mib
    vcpus          = each.value.vcpus
    clone          = each.value.clone
    memory_sharing = each.value.memory_sharing
    # the API keeps group DNs canonical: lower case, sorted
    groups = sort([for g in each.value.groups : lower(g)])
  })
  force_new               = ["memory_mib", "vcpus", "memory_sharing"]
  ignore_changes_to       = ["size", "image"]
  ignore_server_additions = true
}

resource "restapi_object" "policy" {
  for_each = var.policies

  path                    = "/api/v1/policies/documents"
  id_attribute            = "name"
  data                    = jsonencode({ name = each.key, yaml = each.value })
  ignore_server_additions = true
}

resource "restapi_object" "roster" {
  for_each = var.rosters

  path                    = "/api/v1/rosters"
  id_attribute            = "pool"
  data                    = jsonencode({ pool = each.key, yaml = each.value })
  ignore_server_additions = true
  depends_on              = [restapi_object.pool]
}
