"""Who calls a control-plane route: the tenant's principal, from the same API keys and the
same cache as the check path, with admin routes closed to standard keys, a signed key's
signature verified (``limiter/http/signatures.py``), and the tenant's control-plane limits
(``limiter/api_limits.py``) counted."""

from __future__ import annotations

from starlette.requests import Request

from control.http import read_body
from limiter.api_limits import ApiLimiter, Limited
from limiter.auth import Authenticator, Principal
from limiter.http.bearer import authenticate, verify_signature
from limiter.http.problems import Problem, too_many_requests

_WHAT = {
    Limited.CONTROL: "control-plane requests",
    Limited.TEST_PING: "webhook test pings",
    Limited.PRIVACY: "privacy requests",
}


class ControlAuth:
    def __init__(self, auth: Authenticator, limits: ApiLimiter | None = None):
        self._auth = auth
        self._limits = limits

    async def principal(
        self, request: Request, *, admin: bool, limit: Limited = Limited.CONTROL
    ) -> Principal:
        """The caller's principal; 401 without a valid key (or a signed key's valid
        signature, which covers the body: it is read here, once), 403 if ``admin`` and it is not,
        429 when the tenant has made too many requests of the kind ``limit``."""
        principal = await authenticate(self._auth, request.scope, self._limits)
        signing_key = principal.signing_key
        if signing_key is not None:
            body = await read_body(request)
            await verify_signature(signing_key, request.scope, body, self._limits)
        if admin and not principal.admin:
            raise Problem(403, "forbidden", "this route needs an admin key of the tenant")
        if self._limits is not None:
            retry_after = await self._limits.hit(limit, principal.tenant)
            if retry_after is not None:
                rate = self._limits.limits.rate(limit)
                raise too_many_requests(
                    retry_after,
                    f"tenant {principal.tenant!r} reached its limit of {rate} "
                    f"{_WHAT.get(limit, limit.value)}: retry in {retry_after}s",
                )
        return principal

    def forget(self) -> None:
        """Drop every cached key and tenant setting: a revocation or a new fail mode is then
        in force on this instance at once (other instances see it within the cache's TTL)."""
        self._auth.forget()
