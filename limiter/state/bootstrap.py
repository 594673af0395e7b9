"""First-start credentials: the bootstrap key, or a generated admin key of ``default``."""

from __future__ import annotations

from limiter.state.apikeys import KeyStore

DEFAULT_TENANT = "default"


async def bootstrap(keys: KeyStore, bootstrap_key: str | None) -> str | None:
    """Register ``bootstrap_key`` (idempotently) or, on an empty store, create an admin key.

    Returns a newly generated key, which the caller shows once; None otherwise."""
    if bootstrap_key:
        await keys.create(DEFAULT_TENANT, admin=True, name="bootstrap", api_key=bootstrap_key)
        return None
    if await keys.tenants():
        return None
    api_key, _ = await keys.create(DEFAULT_TENANT, admin=True, name="bootstrap")
    return api_key
