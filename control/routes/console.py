"""``GET /``: the browser console, a static page over the existing ``/v1`` routes.

Every file ships in the package (``control/console/``, vendored libraries included), so
the console works offline; it adds no data path of its own, and it is served by Starlette
only: the check routes answer on the raw ASGI fast path before any router is reached.

The files are read once, at start.  Their URLs carry a digest of their contents
(``/console/<version>/app.js``), so a browser may keep them for a year and a new release
is fetched at once; the page itself is revalidated on every load.  Every answer forbids
inline scripts and any connection but to this origin (the Content-Security-Policy below).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from limiter.http.problems import Problem

# the page's scripts and styles come from this origin only, and it may call only the API
# of this origin: a key typed into it can go nowhere else
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}
ASSET_PREFIX = "/console/"
VERSION_PLACEHOLDER = "{{version}}"
# a versioned asset never changes under its URL
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
_SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    # the page's address may carry an API key in its fragment until the page removes it
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


class ConsoleAssets:
    """The console's files, read from ``root`` (by default the package's)."""

    def __init__(self, root: Traversable | None = None):
        root = root if root is not None else files("control").joinpath("console")
        found: dict[str, bytes] = {}
        _collect(root, "", found)
        if "index.html" not in found:
            raise FileNotFoundError(f"the console's index.html is missing from {root}")
        digest = hashlib.sha256()
        for name in sorted(found):
            digest.update(name.encode() + b"\0" + found[name] + b"\0")
        self.version = digest.hexdigest()[:16]
        self.assets = {
            name: _asset(body, name)
            for name, body in found.items()
            if name != "index.html" and _suffix(name) in CONTENT_TYPES
        }
        page = found["index.html"].replace(VERSION_PLACEHOLDER.encode(), self.version.encode())
        self.index = _asset(page, "index.html")


class ConsoleRoutes:
    def __init__(self, assets: ConsoleAssets):
        self._assets = assets

    def routes(self) -> list[Route]:
        return [
            Route("/", self.index, methods=["GET"]),
            Route(ASSET_PREFIX + "{version}/{name:path}", self.asset, methods=["GET"]),
        ]

    async def index(self, request: Request) -> Response:
        return _respond(request, self._assets.index, REVALIDATE)

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        asset = self._assets.assets.get(name)
        if asset is None:
            raise Problem(404, "not-found", f"the console has no file {name[:100]!r}")
        # an older page's URL still gets today's file, but must not keep it for a year
        current = request.path_params["version"] == self._assets.version
        return _respond(request, asset, IMMUTABLE if current else REVALIDATE)


def _respond(request: Request, asset: Asset, cache_control: str) -> Response:
    headers = {**_SECURITY_HEADERS, "cache-control": cache_control, "etag": asset.etag}
    if asset.etag in _etags(request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, headers={**headers, "content-type": asset.content_type})


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def _asset(body: bytes, name: str) -> Asset:
    return Asset(body, CONTENT_TYPES[_suffix(name)], f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def _suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:] if dot >= 0 else ""


def _collect(folder: Traversable, prefix: str, found: dict[str, bytes]) -> None:
    for entry in folder.iterdir():
        if entry.is_dir():
            _collect(entry, f"{prefix}{entry.name}/", found)
        elif entry.is_file():
            found[prefix + entry.name] = entry.read_bytes()
