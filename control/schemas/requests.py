"""Request bodies of the control-plane routes, validated by msgspec as they are decoded.

The OpenAPI document (``control/openapi.py``) is generated from these same structs, so what
the API accepts and what it documents cannot differ.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from limiter.http.schemas import MAX_KEY_LENGTH
from limiter.state.allowlist import MAX_NOTE_LENGTH
from limiter.state.apikeys import MAX_NAME_LENGTH, MAX_SEGMENT_LENGTH
from limiter.state.blocks import MAX_BLOCK_SECONDS, MAX_REASON_LENGTH, MAX_VALUE_LENGTH
from limiter.state.tenants import (
    MAX_CAMPAIGN_BLOCK_TTL,
    MAX_CAMPAIGN_MEMBERS,
    MAX_DYNAMIC_BLOCKS_LIMIT,
    MIN_CAMPAIGN_BLOCK_TTL,
    MIN_CAMPAIGN_MEMBERS,
    MIN_DETECTION_THRESHOLD,
    DetectionMode,
    FailMode,
)
from webhooks.registry import ALERT_KINDS, MAX_DESCRIPTION_LENGTH
from webhooks.targets import MAX_URL_LENGTH

# API keys, blocks and tenant settings


class KeyCreate(msgspec.Struct, kw_only=True):
    name: Annotated[str, Meta(max_length=MAX_NAME_LENGTH)] = ""
    admin: bool = False
    segment: Annotated[
        str,
        Meta(
            max_length=MAX_SEGMENT_LENGTH,
            description="Customer segment (tier) of this key's checks that name none.",
        ),
    ] = ""
    signed: Annotated[
        bool,
        Meta(
            description=(
                "The key's requests must be HMAC-SHA256 signed with a signing secret, "
                "returned once as `signing_secret` (docs/security.md, 'Signed requests')."
            )
        ),
    ] = False


class BlockCreate(msgspec.Struct, kw_only=True):
    scope: Literal["ip", "key", "user_id"]
    value: Annotated[str, Meta(min_length=1, max_length=1024)]
    ttl: Annotated[int, Meta(ge=1, le=MAX_BLOCK_SECONDS, description="Seconds.")]
    reason: Annotated[str, Meta(max_length=MAX_REASON_LENGTH)] = ""
    mode: Literal["enforce", "shadow"] = "enforce"


class SettingsUpdate(msgspec.Struct, kw_only=True):
    """Only the fields given change; ``fail_mode: null`` returns to the server's default."""

    fail_mode: FailMode | UnsetType | None = UNSET
    detection_mode: (
        Annotated[
            DetectionMode,
            Meta(description="Dynamic blocks: enforce, shadow (recorded, not enforced), off."),
        ]
        | UnsetType
    ) = UNSET
    max_dynamic_blocks: (
        Annotated[
            int,
            Meta(ge=0, le=MAX_DYNAMIC_BLOCKS_LIMIT, description="Cap on active detector blocks."),
        ]
        | UnsetType
    ) = UNSET
    detection_threshold: (
        Annotated[
            float,
            Meta(
                ge=MIN_DETECTION_THRESHOLD,
                le=1,
                description="Score a verdict needs to block this tenant's subjects, when "
                "higher than the detectors' own (0.8); null returns to theirs.",
            ),
        ]
        | UnsetType
        | None
    ) = UNSET
    # coordinated campaigns (detectors/campaigns.py); null returns one to the detectors' own
    campaign_detection: (
        Annotated[bool, Meta(description="Campaign detection on (the default) or off.")]
        | UnsetType
        | None
    ) = UNSET
    campaign_min_members: (
        Annotated[
            int,
            Meta(
                ge=MIN_CAMPAIGN_MEMBERS,
                le=MAX_CAMPAIGN_MEMBERS,
                description="Sources that started together it takes to found a campaign "
                "(the detectors' own: 5).",
            ),
        ]
        | UnsetType
        | None
    ) = UNSET
    campaign_mode: (
        Annotated[
            Literal["enforce", "shadow"],
            Meta(
                description="shadow: a campaign's blocks are recorded, not enforced, while "
                "the rest of detection enforces; enforce: as detection_mode."
            ),
        ]
        | UnsetType
        | None
    ) = UNSET
    campaign_block_ttl: (
        Annotated[
            int,
            Meta(
                ge=MIN_CAMPAIGN_BLOCK_TTL,
                le=MAX_CAMPAIGN_BLOCK_TTL,
                description="Seconds a campaign member's first block lasts (repeat offences "
                "escalate from it; the detectors' own: 900).",
            ),
        ]
        | UnsetType
        | None
    ) = UNSET


# the allowlist


class AllowlistAdd(msgspec.Struct, kw_only=True):
    scope: Literal["ip", "key", "user_id"]
    value: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=MAX_VALUE_LENGTH,
            description="An IP address or network (CIDR), a key, or a user id.",
        ),
    ]
    note: Annotated[str, Meta(max_length=MAX_NOTE_LENGTH)] = ""


# privacy requests

UserId = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="The user: the `user_id` of checks, and keys equal to it or "
        "starting with `<user_id>:`.",
    ),
]


class PrivacyDelete(msgspec.Struct, kw_only=True):
    user_id: UserId
    reason: Annotated[str, Meta(max_length=500)] = ""


class PrivacySummary(msgspec.Struct, kw_only=True):
    user_id: UserId


# webhooks

Url = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="http(s) URL of a public address (Slack incoming webhooks get a "
        "Slack message).",
    ),
]
Events = Annotated[
    list[Annotated[str, Meta(max_length=100)]],
    Meta(
        max_length=len(ALERT_KINDS),
        description="Alert kinds to deliver: "
        + ", ".join(ALERT_KINDS)
        + " (all, when left out at creation); `block.*` and `incident.*` stand for every "
        "kind of that object.  A webhook that receives `incident.*` kinds hears of a "
        "coordinated campaign's blocks through its incident, not block by block.",
    ),
]
Description = Annotated[str, Meta(max_length=MAX_DESCRIPTION_LENGTH)]
Enabled = Annotated[
    bool,
    Meta(description="A disabled webhook is sent nothing; deliveries due meanwhile are dropped."),
]


class WebhookCreate(msgspec.Struct, kw_only=True):
    url: Url
    events: Events | None = None
    description: Description = ""
    enabled: Enabled = True


class WebhookUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Only the fields given change.  Unknown fields are refused: a misspelt one would
    otherwise change nothing and still answer 200."""

    url: Url | UnsetType = UNSET
    events: Events | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    enabled: Enabled | UnsetType = UNSET
