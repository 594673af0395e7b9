"""The durable copy of the control-plane records (keys, tenants' settings, webhooks,
allowlists, manual blocks), and their restoration when Redis loses its data."""
