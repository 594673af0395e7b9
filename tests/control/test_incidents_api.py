"""``GET /v1/incidents`` on the session's `ratewatch serve`: any key of the tenant reads its
incidents, nobody else's; bad input is a problem, never a 500."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from redis.asyncio import Redis

from detectors.incident_store import Incident, IncidentStore, Member
from limiter.keyspace import Keyspace
from tests.support.credentials import create_key
from tests.support.servers import RatewatchProcess, RedisServer

pytestmark = pytest.mark.timeout(30)


def incident(incident_id: str, state: str, last_seen: float) -> Incident:
    now = time.time()
    return Incident(
        id=incident_id,
        family="scraping",
        state=state,
        mode="enforce",
        opened_at=now,
        updated_at=now,
        first_seen=last_seen - 30,
        last_seen=last_seen,
        reasons=["coordinated scraping campaign: 12 addresses …"],
        evidence={"route_template": "/catalogue/*", "behaviour": "walking"},
        counts={"members": 1, "blocked": 1},
        members=[Member("192.0.2.1", "blocked", now, "blk_1")],
    )


async def seed(url: str, tenant: str) -> None:
    client = Redis.from_url(url)
    try:
        store = IncidentStore(client, Keyspace())
        now = time.time()
        await store.save(tenant, incident("inc_old", "closed", now - 600))
        await store.save(tenant, incident("inc_new", "open", now))
    finally:
        await client.aclose()


def test_any_key_of_the_tenant_reads_its_incidents_and_no_other_tenant_does(
    limiter: RatewatchProcess,
    redis_server: RedisServer,
    tenant: str,
    standard_key: str,
    anon: httpx.Client,
) -> None:
    asyncio.run(seed(redis_server.url, tenant))
    headers = {"Authorization": f"Bearer {standard_key}"}
    with httpx.Client(base_url=limiter.base_url, headers=headers) as api:
        listed = api.get("/v1/incidents").json()["incidents"]
        assert [i["id"] for i in listed] == ["inc_new", "inc_old"]
        assert "members" not in listed[0]
        assert listed[0]["evidence"]["route_template"] == "/catalogue/*"
        open_only = api.get("/v1/incidents", params={"state": "open"}).json()
        assert [i["id"] for i in open_only["incidents"]] == ["inc_new"]
        one = api.get("/v1/incidents/inc_new").json()
        assert one["members"] == [
            {"ip": "192.0.2.1", "outcome": "blocked", "joined_at": one["members"][0]["joined_at"],
             "block_id": "blk_1"}
        ]  # fmt: skip
        for bad in (
            api.get("/v1/incidents", params={"state": "ajar"}),
            api.get("/v1/incidents/inc_missing"),
        ):
            assert bad.status_code in (404, 422)
            assert bad.headers["content-type"].startswith("application/problem+json")

    other = create_key(redis_server.url, tenant + "-b")
    with httpx.Client(
        base_url=limiter.base_url, headers={"Authorization": f"Bearer {other}"}
    ) as stranger:
        assert stranger.get("/v1/incidents").json()["incidents"] == []
        assert stranger.get("/v1/incidents/inc_new").status_code == 404
    assert anon.get("/v1/incidents").status_code == 401
