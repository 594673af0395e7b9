"""A block's record: what ``<tenant tag>:blocks`` holds per block id, as JSON
(``limiter.state.blocks`` describes the storage)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Block:
    id: str
    scope: str
    value: str
    reason: str
    created_at: float
    expires_at: float
    mode: str = "enforce"
    source: str = "manual"
    detector: str | None = None
    score: float | None = None
    explanation: dict[str, Any] | None = field(default=None)
    incident_id: str | None = None

    def public(self) -> dict[str, Any]:
        return asdict(self)
