"""What a proxy's forward-auth request says (``/v1/gate``): the check it asks for, from
``X-RateWatch-*`` headers and the gate URL's query, and the original request it stands for
(client address, path, user agent) from the proxy's forwarding headers.

Which source is believed matters, because a proxy passes its client's headers through:
- the query of ``/v1/gate?…`` is the proxy's own configuration, so it wins over headers;
  under ``/v1/gate/<path>`` (Envoy's ``path_prefix``) path and query are the original
  request's and carry no options;
- the client address comes from ``X-Forwarded-For`` only as uvicorn resolved it for a peer
  named by ``--trusted-proxies``, and from ``X-Real-IP`` only when the peer is so named.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import parse_qsl

from limiter.http.asgi import Scope, header
from limiter.http.problems import Problem

GATE_PATH = "/v1/gate"
# the prefix of every option's header: X-RateWatch-Policy, X-RateWatch-Identifier, …
OPTION_HEADER = b"x-ratewatch-"
OPTIONS = ("key", "policy", "identifier", "limit", "window", "cost", "algorithm", "deny-status")
# what a denial may be answered with: 429 (Traefik, Caddy, Envoy pass it on), or 403/401
# for nginx's auth_request, which fails any other status with a 500
DENY_STATUSES = (429, 403, 401)
DEFAULT_DENY_STATUS = 429
# the original request's path, by the header each proxy sends it in
URI_HEADERS = (b"x-forwarded-uri", b"x-original-uri", b"x-envoy-original-path")
MAX_TEXT = 2048  # the check API's bound on `route` and `user_agent`


def is_gate_path(path: str) -> bool:
    return path.startswith(GATE_PATH) and (
        len(path) == len(GATE_PATH) or path[len(GATE_PATH)] == "/"
    )


class TrustedProxies:
    """The peers named by ``--trusted-proxies`` (addresses, networks or ``*``)."""

    def __init__(self, spec: str):
        entries = [entry.strip() for entry in spec.split(",") if entry.strip()]
        self.any = "*" in entries
        self._networks = [
            ipaddress.ip_network(entry, strict=False) for entry in entries if entry != "*"
        ]

    def __contains__(self, host: object) -> bool:
        if self.any:
            return True
        try:
            address = ipaddress.ip_address(str(host))
        except ValueError:
            return False
        return any(address in network for network in self._networks)


@dataclass(frozen=True, slots=True)
class GateRequest:
    """The options of one gate request (raw strings, validated by the handler) and the
    original request it stands for."""

    options: dict[str, str]
    client: str | None
    route: str | None
    user_agent: str | None
    deny_status: int


def gate_request(scope: Scope, trusted: TrustedProxies | None) -> GateRequest:
    options: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name.startswith(OPTION_HEADER):
            option = name[len(OPTION_HEADER) :].decode("latin-1")
            if option in OPTIONS and value:
                options[option] = value.decode("latin-1").strip()
    path: str = scope["path"]
    if path == GATE_PATH and scope.get("query_string"):
        query = scope["query_string"].decode("latin-1")
        for option, value in parse_qsl(query, keep_blank_values=False):
            option = option.replace("_", "-")
            if option == "key":
                # a key in a URL ends up in access logs: only ever in a header
                raise Problem(
                    422,
                    "validation-error",
                    "send the API key in `X-RateWatch-Key` or `Authorization`, not the query",
                )
            if option in OPTIONS:
                options[option] = value.strip()
    return GateRequest(
        options,
        client_address(scope, trusted),
        _route(scope, path),
        _text(header(scope, b"user-agent")),
        _deny_status(options.pop("deny-status", None)),
    )


def client_address(scope: Scope, trusted: TrustedProxies | None) -> str | None:
    """The original client's address.  uvicorn has already replaced the peer by the client
    ``X-Forwarded-For`` names when the peer is trusted; ``X-Real-IP`` is believed only in
    the same case, and only without an ``X-Forwarded-For``."""
    client = scope.get("client")
    host = str(client[0]) if client else None
    if trusted is None or header(scope, b"x-forwarded-for") is not None:
        return host
    real = header(scope, b"x-real-ip")
    if real is not None and host in trusted:
        return real.decode("latin-1").strip() or host
    return host


def _route(scope: Scope, path: str) -> str | None:
    """The original request's path without its query (which may hold personal data)."""
    if path != GATE_PATH:
        return path[len(GATE_PATH) :][:MAX_TEXT]  # uvicorn decoded it already
    for name in URI_HEADERS:
        value = header(scope, name)
        if value:
            return _text(value.split(b"?", 1)[0])
    return None


def _text(value: bytes | None) -> str | None:
    if not value:
        return None
    return value[:MAX_TEXT].decode("utf-8", "replace")


def _deny_status(value: str | None) -> int:
    if value is None:
        return DEFAULT_DENY_STATUS
    if not value.isdigit() or int(value) not in DENY_STATUSES:
        raise Problem(
            422,
            "validation-error",
            f"deny-status {value!r} is not one of {', '.join(map(str, DENY_STATUSES))}",
        )
    return int(value)
