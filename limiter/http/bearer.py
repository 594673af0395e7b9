"""Who sends a request: the principal of its ``Authorization: Bearer <api key>``, or the
problem that answers it (401 without a valid key, 503 when the key store is down and the
key was never seen).  The check path and the control plane authenticate the same way."""

from __future__ import annotations

from limiter.auth import Authenticator, Principal
from limiter.errors import StoreUnavailable
from limiter.http.asgi import Scope, bearer_token
from limiter.http.problems import Problem
from limiter.state.apikeys import MAX_KEY_LENGTH


def cached_principal(auth: Authenticator, scope: Scope) -> Principal | None:
    """The principal of the request's key when the cache holds it fresh (most requests):
    no coroutine to await.  None means: ask ``authenticate``."""
    token = bearer_token(scope)
    return None if token is None else auth.cached(token)


async def authenticate(auth: Authenticator, scope: Scope) -> Principal:
    token = bearer_token(scope)
    if token is None:
        raise Problem(401, "unauthorized", "send an API key as 'Authorization: Bearer <key>'")
    if len(token) > MAX_KEY_LENGTH:
        raise Problem(
            401,
            "unauthorized",
            f"the API key is {len(token)} characters long: no key is longer than {MAX_KEY_LENGTH}",
        )
    try:
        principal = await auth.authenticate(token)
    except StoreUnavailable:
        raise Problem(
            503, "store-unavailable", "the key store is unreachable and this key is not cached"
        ) from None
    if principal is None:
        raise Problem(401, "unauthorized", "the API key is not valid or was revoked")
    return principal
