output "pools" {
  description = "The pools ShiftDesk reports after the last read (name => API object as JSON)."
  value       = { for name, pool in restapi_object.pool : name => pool.api_response }
}

output "policy_revisions" {
  description = "The policy revision each policy was last read from."
  value       = { for name, policy in restapi_object.policy : name => policy.api_data["revision"] }
}
