"""Named policies: a tenant's sets of limits, checked by name, with per-identifier
overrides (``docs/policies.md``)."""
