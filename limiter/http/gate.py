"""``/v1/gate``: forward authentication for proxies (nginx ``auth_request``, Traefik
ForwardAuth, Caddy ``forward_auth``, Envoy ``ext_authz``), on the check path.

The proxy asks before it forwards a request; the gate decides one check, the same way
``POST /v1/check`` does (auth cache, decider, decision event, metrics), from the request's
headers (``limiter/http/forwarded.py``) instead of a JSON body, and answers 200 to let the
request through or the denial status (429 by default) with ``Retry-After`` and the
``RateLimit`` headers.  A signed key cannot be used here: a proxy does not sign.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from limiter.api_limits import ApiLimiter
from limiter.auth import Authenticator
from limiter.failover import FailoverDecider
from limiter.http.asgi import JSON, Headers, Scope, bearer_token, header, respond
from limiter.http.bearer import authenticate
from limiter.http.checks import CheckHandler
from limiter.http.forwarded import OPTIONS, GateRequest, TrustedProxies, gate_request
from limiter.http.problems import PROBLEM_CONTENT_TYPE, Problem
from limiter.http.schemas import CheckRequest
from limiter.metrics import LimiterMetrics
from limiter.policies.checks import conclude, policy_header
from limiter.results import CheckResult, to_result
from limiter.store.base import Check

_encoder = msgspec.json.Encoder()
# the check request's field that an option became, where the names differ
_OPTION_OF = {"key": "identifier"}
# the options that are fields of the check request as they are
_FIELDS = frozenset(("policy", "limit", "window", "cost", "algorithm"))


class GateHandler:
    def __init__(
        self,
        checks: CheckHandler,
        auth: Authenticator,
        decider: FailoverDecider,
        metrics: LimiterMetrics,
        api_limits: ApiLimiter | None = None,
        trusted_proxies: TrustedProxies | None = None,
    ):
        self._checks = checks  # turns a request into its check, as POST /v1/check does
        self._auth = auth
        self._decider = decider
        self._metrics = metrics
        self._api_limits = api_limits
        self._trusted = trusted_proxies

    async def gate(self, scope: Scope, receive: Any, send: Any) -> None:
        started = time.perf_counter_ns()
        key = header(scope, b"x-ratewatch-key")
        token = key.decode("latin-1").strip() if key else bearer_token(scope)
        principal = (self._auth.cached(token) if token else None) or await authenticate(
            self._auth, scope, self._api_limits, token
        )
        if principal.signing_key is not None:
            raise Problem(
                401,
                "unauthorized",
                "a signed key cannot be used at the gate (a proxy does not sign requests): "
                "give the proxy an unsigned key",
            )
        gate = gate_request(scope, self._trusted)
        request = self._request(gate)
        tenant = principal.tenant
        if request.policy is not None:
            found = await self._checks.find_policy(tenant, request)
            check = self._checks.to_policy_check(
                tenant, request, found, started, None, principal.segment
            )
        else:
            check = self._checks.to_check(tenant, request, started, None, principal.segment)
        outcome = (await self._decider.decide([check], principal.fail_mode))[0]
        decided, answer, _ = conclude(check, outcome)
        result = to_result(answer, decided.limit)
        status, body, headers = _answer(gate, check, decided, result)
        await respond(send, status, body, headers)
        self._checks.record(started, decided, outcome, answer, self._metrics.gate_seconds)

    @staticmethod
    def _request(gate: GateRequest) -> CheckRequest:
        """The check the options ask for, as a check request: validated like a body."""
        options = gate.options
        identifier = options.get("identifier") or gate.client
        if identifier is None:
            raise Problem(
                422,
                "validation-error",
                "no identifier: send `X-RateWatch-Identifier`, or the client's address in "
                "`X-Forwarded-For` from a trusted proxy",
            )
        fields: dict[str, Any] = {"key": identifier, "route": gate.route}
        if gate.user_agent is not None:
            fields["user_agent"] = gate.user_agent
        if gate.client is not None:
            fields["ip"] = gate.client
        # with a policy, the limits and algorithm are the policy's: those options (which a
        # client might have added to its own request) are not read
        names = ("policy", "cost") if "policy" in options else OPTIONS
        for name in names:
            if name in options and name in _FIELDS:
                fields[name] = options[name]
        try:
            return msgspec.convert(fields, CheckRequest, strict=False)
        except msgspec.ValidationError as exc:
            field = str(exc).rpartition("$.")[2].rstrip("`")
            if field == "ip":
                source = "the client's address (from the trusted proxy's X-Real-IP)"
            else:
                option = _OPTION_OF.get(field, field)
                source = f"the `X-RateWatch-{option.title()}` header or `{option}` query parameter"
            raise Problem(422, "validation-error", f"{exc} ({source})") from None


def _answer(
    gate: GateRequest, check: Check, decided: Check, result: CheckResult
) -> tuple[int, bytes, Headers]:
    """The status, body and headers of the gate's answer: 200 and the result when allowed,
    else the denial status and a problem, each with the RateLimit headers."""
    name = check.policy or "default"
    item = name if not check.windows else f"{name}-{decided.window_ms // 1000}"
    headers: Headers = [
        (b"ratelimit-policy", policy_header(check, name)),
        (b"ratelimit", b'"%s";r=%d;t=%d' % (item.encode(), result.remaining, result.reset_in)),
    ]
    if result.allowed:
        headers.append((b"content-type", JSON))
        return 200, _encoder.encode(result), headers
    problem = Problem(
        gate.deny_status,
        "rate-limited",
        f"over the limit of {decided.limit} per {decided.window_ms // 1000}s ({result.reason})",
        retry_after=result.retry_after,
        reason=result.reason,
    )
    headers.append((b"content-type", PROBLEM_CONTENT_TYPE))
    if result.retry_after is not None:
        headers.append((b"retry-after", b"%d" % result.retry_after))
    return gate.deny_status, problem.body(), headers
