"""Where a webhook may be delivered: the SSRF guard.

A webhook's URL is chosen by a tenant's admin, yet the request is made by RateWatch, from
inside the operator's network: a URL naming ``127.0.0.1``, a private network or the cloud
metadata address ``169.254.169.254`` would let a tenant reach what only RateWatch can.  So
targets must be ``http(s)`` URLs of public addresses:

- at creation, the URL's literal host is checked (an address in any notation the resolver
  accepts, ``localhost`` and ``*.localhost``);
- at each delivery, every address the name resolves to is checked and the request is sent
  to a checked address (``webhooks/delivery.py``), so a name that resolves to a
  public address when created and to a private one later (DNS rebinding) is refused.

``allow_private`` (``RATEWATCH_WEBHOOKS_ALLOW_PRIVATE=1``) lifts both checks, for receivers
on the operator's own network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from limiter.errors import InvalidInput

MAX_URL_LENGTH = 2048
SCHEMES = ("http", "https")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_CHARACTERS = frozenset("0123456789abcdefx.")
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class TargetRefused(InvalidInput):
    """A webhook URL whose host is, or resolves to, a non-public address."""


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    scheme: str
    host: str  # lower case, without brackets or a trailing dot
    port: int


def parse_target(url: str, *, allow_private: bool = False) -> Target:
    """The checked target of ``url``; InvalidInput naming what is wrong with it, or
    TargetRefused if its literal host is not public (unless ``allow_private``)."""
    url = url.strip()
    if not url or len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"webhook url must be 1-{MAX_URL_LENGTH} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise InvalidInput(f"webhook url {url[:100]!r} contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"webhook url {url[:100]!r} is not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise InvalidInput(f"webhook url {url[:100]!r} must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("webhook url must not carry credentials (user:password@)")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise InvalidInput(f"webhook url {url[:100]!r} names no host")
    address = literal_address(host)
    if address is None and ":" in host:
        raise InvalidInput(f"webhook url host {host[:100]!r} is not an IPv6 address")
    if not allow_private:
        if address is not None and not is_public(address):
            raise TargetRefused(
                f"webhook url host {host} is a non-public address: loopback, private, "
                "link-local, multicast and reserved targets are refused"
            )
        if host == "localhost" or host.endswith(".localhost"):
            raise TargetRefused(f"webhook url host {host} is this machine")
    return Target(url, scheme, host, port or (443 if scheme == "https" else 80))


def literal_address(host: str) -> Address | None:
    """The address ``host`` spells, in any notation a resolver would take for one
    (``127.1``, ``0x7f000001`` and ``2130706433`` are all 127.0.0.1), or None for a name."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 zone names no address
    except ValueError:
        pass
    if set(host) <= _IPV4_CHARACTERS:
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def is_public(address: Address) -> bool:
    """Whether ``address`` is a public unicast address.  IPv6 addresses that carry an IPv4
    one (mapped ``::ffff:a.b.c.d``, 6to4, NAT64) are judged by it as well."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and not is_public(embedded):
            return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


async def resolve_public(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, all public; TargetRefused naming the first that
    is not, InvalidInput if the name does not resolve."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidInput(f"cannot resolve {host}: {exc}") from None
    found: list[str] = []
    for *_, sockaddr in infos:
        text = str(sockaddr[0])
        if text not in found:
            found.append(text)
    for text in found:
        if not is_public(ipaddress.ip_address(text.split("%", 1)[0])):
            raise TargetRefused(f"{host} resolves to the non-public address {text}")
    if not found:
        raise InvalidInput(f"{host} resolves to no address")
    return found
