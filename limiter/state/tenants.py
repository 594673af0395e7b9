"""Per-tenant settings kept in the tenant registry (``rw:tenants``).

Detection settings (what the abuse detection's actions may do for a tenant):

- ``detection_mode``: ``enforce`` (the default), ``shadow`` or ``off``.  Enforce is the
  default because the product promises that attackers get blocked with no rules written;
  a cautious tenant opts into shadow mode first (blocks recorded, audited and alerted, not
  enforced), and the cap and the allowlist bound what enforcement can do by mistake.
- ``max_dynamic_blocks``: the most active detector blocks a tenant may have at once
  (default 1000, 0..100000): a detector gone wrong cannot lock out a tenant's whole
  audience, and a refused block is alerted.

Campaign settings (how coordinated campaigns are detected and acted on for a tenant;
``detectors/campaigns.py``), each absent until set, which means the detectors' own:

- ``campaign_detection``: false turns campaign detection off (the tenant's sources are then
  judged one by one only); true, the default, leaves it on.
- ``campaign_min_members``: how many sources that started together it takes to found a
  campaign (``MIN_CAMPAIGN_MEMBERS``..``MAX_CAMPAIGN_MEMBERS``; the detectors' own is 5).
- ``campaign_mode``: ``shadow`` records a campaign's blocks without enforcing them while
  the tenant's other detection enforces; ``enforce`` follows ``detection_mode``.  It can
  only be more cautious than ``detection_mode``: a tenant in shadow or off stays so.
- ``campaign_block_ttl``: how long a campaign member's first block lasts, in seconds
  (``MIN_CAMPAIGN_BLOCK_TTL``..``MAX_CAMPAIGN_BLOCK_TTL``); repeat offences escalate from it.

Settings are one JSON object per tenant, updated by read-modify-write: they change by hand,
rarely; two concurrent changes of one tenant's settings may lose one.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from limiter.errors import ConfigError, InvalidInput, StoreUnavailable
from limiter.keyspace import Keyspace
from limiter.scripts import register_script


class FailMode(enum.StrEnum):
    """What the limiter answers while Redis is unreachable."""

    OPEN = "open"  # decide from the local in-memory store, reason "fail_open"
    CLOSED = "closed"  # deny, reason "fail_closed"


def parse_fail_mode(value: str) -> FailMode:
    try:
        return FailMode(value)
    except ValueError:
        raise InvalidInput(f"fail mode {value!r} is not one of 'open', 'closed'") from None


class DetectionMode(enum.StrEnum):
    """What the abuse detection does with a warranted verdict."""

    ENFORCE = "enforce"  # block the subject
    SHADOW = "shadow"  # record, audit and alert the block, enforce nothing
    OFF = "off"  # nothing


DEFAULT_DETECTION_MODE = DetectionMode.ENFORCE
DEFAULT_MAX_DYNAMIC_BLOCKS = 1000
MAX_DYNAMIC_BLOCKS_LIMIT = 100_000
# a tenant may ask for more evidence than the detectors' own threshold, never for less: a
# lower value than theirs changes nothing, since they only hand over warranted verdicts
MIN_DETECTION_THRESHOLD = 0.5


MIN_CAMPAIGN_MEMBERS = 2
MAX_CAMPAIGN_MEMBERS = 1000
MIN_CAMPAIGN_BLOCK_TTL = 60
MAX_CAMPAIGN_BLOCK_TTL = 24 * 3600
CAMPAIGN_MODES = (DetectionMode.ENFORCE, DetectionMode.SHADOW)


def parse_detection_mode(value: str) -> DetectionMode:
    try:
        return DetectionMode(value)
    except ValueError:
        raise InvalidInput(
            f"detection mode {value!r} is not one of 'enforce', 'shadow', 'off'"
        ) from None


def check_max_dynamic_blocks(value: object) -> int:
    """``value`` if it is a whole number in 0..MAX_DYNAMIC_BLOCKS_LIMIT; InvalidInput naming
    it otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"max dynamic blocks {value!r} is not a whole number")
    if not 0 <= value <= MAX_DYNAMIC_BLOCKS_LIMIT:
        raise InvalidInput(
            f"max dynamic blocks {value!r} is out of range: 0..{MAX_DYNAMIC_BLOCKS_LIMIT}"
        )
    return value


def check_detection_threshold(value: object) -> float | None:
    """``value`` if it is None (the detectors' own threshold) or a number in
    MIN_DETECTION_THRESHOLD..1; InvalidInput naming it otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"detection threshold {value!r} is not a number")
    if not MIN_DETECTION_THRESHOLD <= value <= 1:
        raise InvalidInput(
            f"detection threshold {value!r} is out of range: {MIN_DETECTION_THRESHOLD}..1"
        )
    return float(value)


@dataclass(frozen=True, slots=True)
class CampaignTuning:
    """A tenant's campaign settings (see the module's docstring); None: the detectors' own."""

    enabled: bool = True
    min_members: int | None = None
    mode: DetectionMode | None = None
    block_ttl: int | None = None

    def mode_within(self, mode: DetectionMode) -> DetectionMode:
        """What a campaign's blocks do when the tenant's detection is in ``mode``."""
        if mode is DetectionMode.ENFORCE and self.mode is DetectionMode.SHADOW:
            return DetectionMode.SHADOW
        return mode


DEFAULT_CAMPAIGN_TUNING = CampaignTuning()


def _whole_number(what: str, value: object, least: int, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} {value!r} is not a whole number")
    if not least <= value <= most:
        raise InvalidInput(f"{what} {value!r} is out of range: {least}..{most}")
    return value


def check_campaign_settings(settings: Mapping[str, object]) -> CampaignTuning:
    """The campaign settings in ``settings`` (a tenant's record), defaults where absent or
    None; InvalidInput naming the first value that is not valid."""
    enabled = settings.get("campaign_detection", True)
    if enabled is None:
        enabled = True
    if not isinstance(enabled, bool):
        raise InvalidInput(f"campaign_detection {enabled!r} is not true or false")
    members = settings.get("campaign_min_members")
    if members is not None:
        members = _whole_number(
            "campaign_min_members", members, MIN_CAMPAIGN_MEMBERS, MAX_CAMPAIGN_MEMBERS
        )
    mode = settings.get("campaign_mode")
    if mode is not None:
        if mode not in CAMPAIGN_MODES:
            raise InvalidInput(f"campaign_mode {mode!r} is not one of 'enforce', 'shadow'")
        mode = DetectionMode(str(mode))
    ttl = settings.get("campaign_block_ttl")
    if ttl is not None:
        ttl = _whole_number(
            "campaign_block_ttl", ttl, MIN_CAMPAIGN_BLOCK_TTL, MAX_CAMPAIGN_BLOCK_TTL
        )
    return CampaignTuning(enabled, members, mode, ttl)


@dataclass(frozen=True, slots=True)
class DetectionSettings:
    """``threshold``: the score a verdict needs before this tenant's subjects are blocked,
    when the tenant raised it above the detectors' own (None: theirs); ``campaigns``: how
    coordinated campaigns are detected and acted on."""

    mode: DetectionMode = DEFAULT_DETECTION_MODE
    max_dynamic_blocks: int = DEFAULT_MAX_DYNAMIC_BLOCKS
    threshold: float | None = None
    campaigns: CampaignTuning = DEFAULT_CAMPAIGN_TUNING


class TenantSettingsStore:
    def __init__(self, redis: Redis, keyspace: Keyspace):
        self._redis = redis
        self._keyspace = keyspace
        self._update = register_script(redis, "limiter", "settings_update.lua")

    async def get(self, tenant: str) -> dict[str, object]:
        try:
            raw = await self._redis.hget(self._keyspace.tenants, tenant)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        settings: dict[str, object] = json.loads(raw) if raw else {}
        return settings

    async def restore(self, tenant: str, settings: Mapping[str, object]) -> None:
        """Write the tenant's record back as it was stored."""
        try:
            await self._redis.hset(self._keyspace.tenants, tenant, json.dumps(dict(settings)))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc

    async def fail_mode(self, tenant: str) -> FailMode | None:
        """The tenant's own fail mode, or None to follow the global setting."""
        value = (await self.get(tenant)).get("fail_mode")
        return FailMode(str(value)) if value else None

    async def update(self, tenant: str, changes: Mapping[str, object]) -> dict[str, object]:
        """Apply ``changes`` (None removes a setting) in one atomic step and return the
        settings as stored: two administrators changing different settings at once both
        get their change.  Values must already be valid (the ``set_*`` methods check)."""
        try:
            stored = await self._update(
                keys=[self._keyspace.tenants], args=[tenant, json.dumps(dict(changes))]
            )
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        settings: dict[str, object] = json.loads(stored)
        return settings

    async def set_fail_mode(self, tenant: str, mode: FailMode | None) -> dict[str, object]:
        return await self.update(tenant, {"fail_mode": mode.value if mode else None})

    async def detection(self, tenant: str) -> DetectionSettings:
        """The tenant's detection settings, defaults filled in; ConfigError naming a stored
        value that is not valid."""
        return detection_of(tenant, await self.get(tenant))

    async def set_detection_mode(self, tenant: str, mode: DetectionMode | str) -> dict[str, object]:
        return await self.update(tenant, {"detection_mode": parse_detection_mode(mode).value})

    async def set_detection_threshold(
        self, tenant: str, threshold: float | None
    ) -> dict[str, object]:
        checked = check_detection_threshold(threshold)
        return await self.update(tenant, {"detection_threshold": checked})

    async def set_max_dynamic_blocks(self, tenant: str, cap: int) -> dict[str, object]:
        return await self.update(tenant, {"max_dynamic_blocks": check_max_dynamic_blocks(cap)})

    async def set_campaigns(self, tenant: str, changes: Mapping[str, object]) -> dict[str, object]:
        """Change campaign settings (``campaign_*`` names; None returns one to the
        detectors' own); InvalidInput naming a value that is not valid."""
        unknown = sorted(name for name in changes if not name.startswith("campaign_"))
        if unknown:
            raise InvalidInput(f"{unknown[0]!r} is not a campaign setting")
        check_campaign_settings(changes)
        return await self.update(tenant, changes)

    async def many(self, tenants: Iterable[str]) -> dict[str, dict[str, object]]:
        """The stored records of ``tenants`` (one round trip); a tenant with none is
        missing from the answer."""
        names = sorted(set(tenants))
        if not names:
            return {}
        try:
            raw = await self._redis.hmget(self._keyspace.tenants, names)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from exc
        return {name: json.loads(found) for name, found in zip(names, raw, strict=True) if found}


def detection_of(tenant: str, settings: Mapping[str, object]) -> DetectionSettings:
    """The detection settings in ``settings`` (a tenant's record, as ``get`` reads it),
    defaults filled in; ConfigError naming a stored value that is not valid."""
    try:
        return DetectionSettings(
            parse_detection_mode(str(settings.get("detection_mode", DEFAULT_DETECTION_MODE))),
            check_max_dynamic_blocks(
                settings.get("max_dynamic_blocks", DEFAULT_MAX_DYNAMIC_BLOCKS)
            ),
            check_detection_threshold(settings.get("detection_threshold")),
            check_campaign_settings(settings),
        )
    except InvalidInput as exc:
        raise ConfigError(
            f"tenant {tenant!r} has a stored setting that is not valid: {exc}"
        ) from None
