"""The control plane's routes, one module per route group.  Each group is a class built with
what it needs (``ControlAuth``, its stores, the audit trail) whose ``routes()`` the app
mounts."""

from __future__ import annotations

from typing import Protocol

from starlette.routing import Route


class RouteGroup(Protocol):
    def routes(self) -> list[Route]: ...
