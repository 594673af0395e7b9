"""The adapters' settings: a plain mapping (Django's ``settings.RATEWATCH``, Flask's
``app.config["RATEWATCH"]``) read into a client and a gate, every bad entry named.

Names are case-insensitive: ``LIMIT`` and ``limit`` are the same setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import Any

from ratewatch.client import DEFAULT_TIMEOUT, RateWatch
from ratewatch.wsgi.gate import RateLimitGate
from ratewatch.wsgi.keys import KeyFunc, header_key, ip_key

__all__ = ["CLIENT_OPTIONS", "GATE_OPTIONS", "build"]

GATE_OPTIONS = frozenset(
    {"limit", "window", "key", "limits", "cost", "algorithm", "exclude", "trust_proxies",
     "fail_open", "policy"}
)  # fmt: skip
CLIENT_OPTIONS = frozenset({"client", "api_key", "url", "timeout", "ca_file", "signing_secret"})


def _import(path: str) -> Any:
    module, _, name = path.replace(":", ".").rpartition(".")
    return getattr(import_module(module), name)


def _key(value: object, trust_proxies: bool) -> KeyFunc | None:
    """``"ip"``, ``"header:<name>"``, a function of the environ, or its dotted path."""
    if value is None or value == "ip":
        return ip_key(trust_proxies)
    if callable(value):
        return value
    if isinstance(value, str) and value.startswith("header:"):
        return header_key(value.removeprefix("header:").strip())
    if isinstance(value, str) and "." in value:
        try:
            found = _import(value)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"key {value!r} cannot be imported: {error}") from error
        return _key(found, trust_proxies)
    raise ValueError(
        f"key must be 'ip', 'header:<name>', a function or its dotted path, not {value!r}"
    )


def build(mapping: object, source: str) -> tuple[RateLimitGate, RateWatch, bool]:
    """The gate, its client and whether the client was made here (then the caller closes it).

    Raises ``ValueError`` naming ``source`` and the bad entry.
    """
    if not isinstance(mapping, Mapping):
        raise ValueError(f"{source} must be a dict of settings, not {mapping!r}")
    options = {str(name).lower(): value for name, value in mapping.items()}
    unknown = sorted(set(options) - GATE_OPTIONS - CLIENT_OPTIONS)
    if unknown:
        known = ", ".join(sorted(GATE_OPTIONS | CLIENT_OPTIONS))
        raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown)} (known: {known})")
    try:
        gate_options = {name: options[name] for name in GATE_OPTIONS if name in options}
        trust = bool(gate_options.get("trust_proxies", False))
        gate_options["key"] = _key(gate_options.get("key"), trust)
        limits = gate_options.get("limits")
        if isinstance(limits, str):
            gate_options["limits"] = _import(limits)
        for name in ("limit", "window"):
            if name not in gate_options and "policy" not in gate_options:
                raise ValueError(f"{name} is required (or a policy)")
        client = options.get("client")
        owned = client is None
        if client is None:
            timeout = options.get("timeout", DEFAULT_TIMEOUT)
            if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
                raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
            # the gate applies the failure policy: the client only reports
            client = RateWatch(
                options.get("api_key"),
                options.get("url"),
                timeout=float(timeout),
                fail_open=False,
                ca_file=options.get("ca_file"),
                signing_secret=options.get("signing_secret"),
            )
        elif not isinstance(client, RateWatch):
            raise ValueError(f"client must be a ratewatch.RateWatch, not {client!r}")
        try:
            gate = RateLimitGate(client, **gate_options)
        except BaseException:
            if owned:
                client.close()
            raise
    except (ValueError, TypeError, ImportError, AttributeError) as error:
        raise ValueError(f"{source}: {error}") from error
    return gate, client, owned
