"""``/v1/policies``: the tenant's named policies and their overrides (``docs/policies.md``).

Reading needs any key of the tenant; a change needs an admin key, is journaled in the
durable copy before it is answered (a deletion: before Redis changes) and audited.  The
instance that made a change rereads its policies at once; every other within the policy
cache's refresh interval.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control.audit import AuditTrail
from control.auth import ControlAuth
from control.durable.records import DurableRecords
from control.http import client_ip, json_response, read_body
from limiter.errors import InvalidInput
from limiter.http.problems import Problem
from limiter.policies.cache import PolicyCache
from limiter.policies.model import Rule, check_identifier, check_name, parse_rule
from stream.audit import OVERRIDE_DELETED, OVERRIDE_SAVED, POLICY_DELETED, POLICY_SAVED


async def read_rule(request: Request) -> Rule:
    """The body as a policy's rule; 400 for a body that is not JSON, 422 naming the field."""
    body = await read_body(request)
    try:
        document: Any = msgspec.json.decode(body) if body.strip() else None
    except msgspec.DecodeError as exc:
        raise Problem(400, "invalid-json", str(exc)) from None
    return parse_rule(document)


def _details(rule: Rule) -> dict[str, Any]:
    """The rule for an audit entry: flat values only."""
    return {
        "limits": ", ".join(f"{w.limit}/{w.window}s" for w in rule.limits),
        "algorithm": rule.algorithm.value if rule.algorithm else None,
        "mode": rule.mode.value if rule.mode else None,
    }


class PolicyRoutes:
    def __init__(
        self,
        auth: ControlAuth,
        policies: PolicyCache,
        audit: AuditTrail,
        durable: DurableRecords,
    ):
        self._auth = auth
        self._cache = policies
        self._store = policies.store
        self._audit = audit
        self._durable = durable

    def routes(self) -> list[Route]:
        one = "/v1/policies/{name}"
        override = one + "/overrides/{identifier:path}"
        return [
            Route("/v1/policies", self.list_policies, methods=["GET"]),
            Route(one, self.get_policy, methods=["GET"]),
            Route(one, self.put_policy, methods=["PUT"]),
            Route(one, self.delete_policy, methods=["DELETE"]),
            Route(one + "/overrides", self.list_overrides, methods=["GET"]),
            Route(override, self.get_override, methods=["GET"]),
            Route(override, self.put_override, methods=["PUT"]),
            Route(override, self.delete_override, methods=["DELETE"]),
        ]

    async def list_policies(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=False)
        policies = await self._store.policies(principal.tenant)
        return json_response({"policies": [p.public() for p in policies]})

    async def get_policy(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=False)
        name = check_name(request.path_params["name"])
        policy = await self._store.policy(principal.tenant, name)
        overrides = await self._store.overrides(principal.tenant, name)
        return json_response({**policy.public(), "overrides": [o.public() for o in overrides]})

    async def put_policy(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        name = check_name(request.path_params["name"])
        rule = await read_rule(request)
        await self._durable.settled()
        policy, created = await self._store.put_policy(principal.tenant, name, rule)
        await self._durable.policy_saved(principal.tenant, policy)
        await self._cache.reload(principal.tenant)
        await self._audit.record(principal, POLICY_SAVED, name, _details(rule), client_ip(request))
        return json_response(policy.public(), 201 if created else 200)

    async def delete_policy(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        name = check_name(request.path_params["name"])
        await self._durable.settled()
        policy = await self._store.policy(principal.tenant, name)
        overrides = await self._store.overrides(principal.tenant, name)
        await self._durable.policy_deleted(principal.tenant, policy, overrides)
        await self._store.delete_policy(principal.tenant, name)
        await self._cache.reload(principal.tenant)
        await self._audit.record(
            principal, POLICY_DELETED, name, {"overrides": len(overrides)}, client_ip(request)
        )
        return json_response({"name": name, "deleted": True})

    async def list_overrides(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=False)
        name = check_name(request.path_params["name"])
        await self._store.policy(principal.tenant, name)
        overrides = await self._store.overrides(principal.tenant, name)
        return json_response({"overrides": [o.public() for o in overrides]})

    async def get_override(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=False)
        name, identifier = self._override_path(request)
        override = await self._store.override(principal.tenant, name, identifier)
        return json_response(override.public())

    async def put_override(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        name, identifier = self._override_path(request)
        rule = await read_rule(request)
        await self._durable.settled()
        override, created = await self._store.put_override(principal.tenant, name, identifier, rule)
        await self._durable.override_saved(principal.tenant, override)
        await self._cache.reload(principal.tenant)
        await self._audit.record(
            principal,
            OVERRIDE_SAVED,
            f"{name}/{identifier}",
            {"policy": name, "identifier": identifier, **_details(rule)},
            client_ip(request),
        )
        return json_response(override.public(), 201 if created else 200)

    async def delete_override(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        name, identifier = self._override_path(request)
        await self._durable.settled()
        override = await self._store.override(principal.tenant, name, identifier)
        await self._durable.override_deleted(principal.tenant, override)
        await self._store.delete_override(principal.tenant, name, identifier)
        await self._cache.reload(principal.tenant)
        await self._audit.record(
            principal,
            OVERRIDE_DELETED,
            f"{name}/{identifier}",
            {"policy": name, "identifier": identifier},
            client_ip(request),
        )
        return json_response({"policy": name, "identifier": identifier, "deleted": True})

    @staticmethod
    def _override_path(request: Request) -> tuple[str, str]:
        try:
            return (
                check_name(request.path_params["name"]),
                check_identifier(request.path_params["identifier"]),
            )
        except InvalidInput as exc:
            raise Problem(422, "validation-error", str(exc)) from None
