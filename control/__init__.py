"""The control plane: the HTTP API for everything that is not a check (keys, blocks,
settings, allowlist, privacy, analytics, audit, alerts, webhooks, health, OpenAPI), and the
service's ASGI app, which serves the limiter's raw check path first and these routes after."""
