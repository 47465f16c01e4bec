"""Use cases. Each owns its transaction and writes the audit log for what it changes."""
