"""web: what the admins' console serves besides the API (capacity plots)."""
