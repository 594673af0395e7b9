"""Who sends a request: the principal of its ``Authorization: Bearer <api key>``, or the
problem that answers it (401 without a valid key, or for a signed key without a valid
signature; 429 once the client's address has failed too often; 503 when the key store is
down and the key was never seen).  The check path and the control plane authenticate the
same way."""

from __future__ import annotations

import hmac

from limiter.api_limits import ApiLimiter, Limited
from limiter.auth import Authenticator, Principal
from limiter.errors import StoreUnavailable
from limiter.http.asgi import Scope, bearer_token
from limiter.http.problems import Problem, too_many_requests
from limiter.http.signatures import verify
from limiter.state.apikeys import MAX_KEY_LENGTH


def cached_principal(auth: Authenticator, scope: Scope) -> Principal | None:
    """The principal of the request's key when the cache holds it fresh (most requests):
    no coroutine to await.  None means: ask ``authenticate``."""
    token = bearer_token(scope)
    return None if token is None else auth.cached(token)


def client_address(scope: Scope) -> str:
    """The peer's address (the proxy's client when ``--trusted-proxies`` names the peer:
    uvicorn then puts it in the scope)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


async def authenticate(
    auth: Authenticator, scope: Scope, limits: ApiLimiter | None = None, token: str | None = None
) -> Principal:
    """The principal of ``token`` (by default the request's bearer token), or the problem."""
    if token is None:
        token = bearer_token(scope)
    if token is None:
        await _failed(limits, scope)
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
        await _failed(limits, scope)
        raise Problem(401, "unauthorized", "the API key is not valid or was revoked")
    return principal


async def verify_signature(
    key: hmac.HMAC, scope: Scope, body: bytes, limits: ApiLimiter | None = None
) -> None:
    """For a signed key (its principal's ``signing_key``): return if the request is signed
    with that key's secret, else the 401, counted as a failed authentication of the
    client's address."""
    try:
        verify(scope, body, key)
    except Problem:
        await _failed(limits, scope)
        raise


async def _failed(limits: ApiLimiter | None, scope: Scope) -> None:
    """Count a failed authentication of the client's address; 429 past its limit.  A valid
    key from the same address is still served: the limit is on failures."""
    if limits is None:
        return
    address = client_address(scope)
    retry_after = await limits.hit(Limited.AUTH_FAILURE, address)
    if retry_after is not None:
        raise too_many_requests(
            retry_after,
            f"too many requests without a valid API key from {address}: retry in {retry_after}s",
        )
