"""``/v1/incidents``: the blocks of one coordinated campaign, grouped (id, family guess,
members, evidence, first and last seen, counts).  Like ``/v1/blocks``, every key of the
tenant may read them: a denied caller should be able to see why."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control.auth import ControlAuth
from control.http import json_response
from detectors.incident_store import CLOSED, OPEN, IncidentStore
from limiter.http.problems import Problem

STATES = (OPEN, CLOSED)


class IncidentRoutes:
    def __init__(self, auth: ControlAuth, incidents: IncidentStore):
        self._auth = auth
        self._incidents = incidents

    def routes(self) -> list[Route]:
        return [
            Route("/v1/incidents", self.list_incidents, methods=["GET"]),
            Route("/v1/incidents/{incident_id}", self.get_incident, methods=["GET"]),
        ]

    async def list_incidents(self, request: Request) -> Response:
        """The tenant's incidents, latest activity first, without their member lists."""
        principal = await self._auth.principal(request, admin=False)
        state = request.query_params.get("state")
        if state is not None and state not in STATES:
            raise Problem(
                422, "validation-error", f"state {state[:100]!r} is not one of {', '.join(STATES)}"
            )
        incidents = await self._incidents.incidents(principal.tenant, state)
        return json_response({"incidents": [incident.summary() for incident in incidents]})

    async def get_incident(self, request: Request) -> Response:
        """One incident with its members (address, outcome, block id)."""
        principal = await self._auth.principal(request, admin=False)
        incident = await self._incidents.get(principal.tenant, request.path_params["incident_id"])
        return json_response(incident.public())
