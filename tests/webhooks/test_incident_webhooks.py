"""Which webhooks hear of a coordinated campaign, and how: subscribers to incidents get the
incident's alerts instead of one per blocked address; block-only subscribers get every
block; ``block.*`` and ``incident.*`` name every kind of their object."""

from __future__ import annotations

import pytest

from limiter.errors import InvalidInput
from stream.alerts import (
    BLOCK_CREATED,
    BLOCK_ESCALATED,
    BLOCK_SHADOWED,
    BLOCK_SKIPPED_CAP,
    INCIDENT_CLOSED,
    INCIDENT_OPENED,
    INCIDENT_UPDATED,
    new_alert_event,
)
from webhooks.payloads import alert_delivery, slack_message
from webhooks.registry import ALERT_KINDS, Webhook, check_events

pytestmark = pytest.mark.timeout(10)
URL = "https://hooks.example.com/in"


def hook(events: tuple[str, ...]) -> Webhook:
    return Webhook("wh_1", "acme", URL, events, "", 1.0, "whsec_x")


def test_wildcards_name_every_kind_of_their_object() -> None:
    assert check_events(["block.*"]) == (
        BLOCK_CREATED,
        BLOCK_ESCALATED,
        BLOCK_SHADOWED,
        BLOCK_SKIPPED_CAP,
    )
    assert check_events(["incident.*", INCIDENT_OPENED]) == (
        INCIDENT_CLOSED,
        INCIDENT_OPENED,
        INCIDENT_UPDATED,
    )
    assert set(check_events(None)) == set(ALERT_KINDS) >= {INCIDENT_OPENED, BLOCK_CREATED}
    for bad in (["nothing.*"], [".*"], ["incident.opened", "block.gone"]):
        with pytest.raises(InvalidInput, match="unknown event kinds"):
            check_events(bad)


def test_a_default_webhook_hears_of_a_campaign_through_its_incident() -> None:
    default = hook(check_events(None))
    assert default.wants(INCIDENT_OPENED)
    assert default.wants(INCIDENT_UPDATED)
    assert default.wants(BLOCK_CREATED)  # a block of no campaign
    assert not default.wants(BLOCK_CREATED, "inc_1")  # a campaign member's block
    assert not default.wants(BLOCK_ESCALATED, "inc_1")


def test_block_subscribers_still_get_every_block() -> None:
    blocks_only = hook(check_events(["block.*"]))
    assert blocks_only.wants(BLOCK_CREATED, "inc_1")
    assert blocks_only.wants(BLOCK_CREATED)
    assert not blocks_only.wants(INCIDENT_OPENED)
    incidents_only = hook(check_events(["incident.*"]))
    assert incidents_only.wants(INCIDENT_CLOSED)
    assert not incidents_only.wants(BLOCK_CREATED, "inc_1")


def test_slack_gets_one_message_per_incident_change() -> None:
    event = new_alert_event(
        "acme",
        INCIDENT_OPENED,
        "incident",
        "inc_1",
        explanation={
            "family": "credential-stuffing",
            "counts": {"members": 200, "blocked": 198, "already_blocked": 2},
            "reasons": ["coordinated credential-stuffing campaign: 200 addresses <!channel>"],
        },
    )
    message = slack_message(alert_delivery("acme", "wh_1", event))
    assert message["text"].startswith("RateWatch opened incident `inc_1`")
    assert "200 addresses" in message["text"]
    assert "<!channel>" not in message["text"]  # escaped: nobody is notified by a reason
    fields = {f["text"].split("\n")[0]: f["text"] for f in message["blocks"][1]["fields"]}
    assert fields["*Blocked*"].endswith("198")
