"""First-start credentials: the bootstrap key, or a generated admin key of ``default``.

A bootstrap key is an admin key chosen by the operator, so it must be one: at least
``MIN_BOOTSTRAP_MATERIAL`` characters besides an ``rwk_`` prefix, of at least
``MIN_DISTINCT_CHARACTERS`` different printable ASCII characters, at most
``MAX_KEY_LENGTH`` long.  A bootstrap key revoked through the API or the CLI leaves a
tombstone (``KeyStore.revoke``) and is not registered again at the next start.
"""

from __future__ import annotations

import logging

from limiter.errors import ConfigError
from limiter.state.apikeys import KEY_PREFIX, MAX_KEY_LENGTH, KeyStore

DEFAULT_TENANT = "default"
MIN_BOOTSTRAP_MATERIAL = 32
MIN_DISTINCT_CHARACTERS = 8

log = logging.getLogger("ratewatch.limiter")


def check_bootstrap_key(key: str) -> str:
    """``key`` if it can be an admin key, else a ConfigError that says why (never quoting
    the key, which is a secret)."""
    material = key.removeprefix(KEY_PREFIX)
    what = "RATEWATCH_BOOTSTRAP_KEY"
    if not all("!" <= char <= "~" for char in key):
        raise ConfigError(f"{what} must be printable ASCII without spaces")
    if len(key) > MAX_KEY_LENGTH:
        raise ConfigError(
            f"{what} is {len(key)} characters long, at most {MAX_KEY_LENGTH} are allowed"
        )
    if len(material) < MIN_BOOTSTRAP_MATERIAL:
        raise ConfigError(
            f"{what} has {len(material)} characters of key material, at least "
            f"{MIN_BOOTSTRAP_MATERIAL} are needed (e.g. `openssl rand -hex 24`)"
        )
    if len(set(material)) < MIN_DISTINCT_CHARACTERS:
        raise ConfigError(
            f"{what} has {len(set(material))} different characters, at least "
            f"{MIN_DISTINCT_CHARACTERS} are needed: use a random key (e.g. `openssl rand -hex 24`)"
        )
    return key


async def bootstrap(keys: KeyStore, bootstrap_key: str | None) -> str | None:
    """Register ``bootstrap_key`` (idempotently, unless it was revoked) or, on an empty
    store, create an admin key.

    Returns a newly generated key, which the caller shows once; None otherwise."""
    if bootstrap_key:
        check_bootstrap_key(bootstrap_key)
        if await keys.was_revoked(bootstrap_key):
            log.warning(
                "RATEWATCH_BOOTSTRAP_KEY was revoked: it stays revoked (set another to "
                "register a new bootstrap key)"
            )
            return None
        await keys.create(DEFAULT_TENANT, admin=True, name="bootstrap", api_key=bootstrap_key)
        return None
    if await keys.tenants():
        return None
    api_key, _ = await keys.create(DEFAULT_TENANT, admin=True, name="bootstrap")
    return api_key
