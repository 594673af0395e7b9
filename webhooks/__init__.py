"""Webhooks: a tenant's endpoints that hear about its alerts.  The registry and its SSRF
guard, in-place updates, the delivery queue in Redis, payloads (Standard Webhooks or Slack),
retries, the worker that delivers, and the counts behind ``/metrics``."""
