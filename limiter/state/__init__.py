"""The tenants' state in Redis that the check path enforces and the control plane edits:
API keys, tenants and their settings, blocks, the allowlist, and a user's data."""
