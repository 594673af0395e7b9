"""Who calls a control-plane route: the tenant's principal, from the same API keys and the
same cache as the check path, with admin routes closed to standard keys."""

from __future__ import annotations

from starlette.requests import Request

from limiter.auth import Authenticator, Principal
from limiter.http.bearer import authenticate
from limiter.http.problems import Problem


class ControlAuth:
    def __init__(self, auth: Authenticator):
        self._auth = auth

    async def principal(self, request: Request, *, admin: bool) -> Principal:
        """The caller's principal; 401 without a valid key, 403 if ``admin`` and it is not."""
        principal = await authenticate(self._auth, request.scope)
        if admin and not principal.admin:
            raise Problem(403, "forbidden", "this route needs an admin key of the tenant")
        return principal

    def forget(self) -> None:
        """Drop every cached key and tenant setting: a revocation or a new fail mode is then
        in force on this instance at once (other instances see it within the cache's TTL)."""
        self._auth.forget()
