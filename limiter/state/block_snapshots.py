"""A process's copy of each tenant's block records, reused while the tenant's block version
stands.

Listing a tenant's active blocks read and decoded every one of its records; the detectors
list them for every verdict they act on, so a flood of verdicts against one tenant cost the
square of its blocks (a listing took 39 ms at 1,000 blocks).  A copy is taken together with
the tenant's block version (``limiter.state.blocks``: every write of a record moves it) and
reused while the version is unchanged.  This process's own writes move the version by
exactly one and are applied to the copy, so the listing after them needs no reread; a write
by anyone else moves it further, and the next listing rereads the records, decoding only
those it has not seen.  A copy older than ``max_age`` seconds is reread whatever the
version says: a tenant erased and written to again could bring its version back to a
number the copy was taken at.  Copies are kept for the ``max_tenants`` tenants listed last
(a limiter answering ``GET /v1/blocks`` for many tenants keeps no copy of each for good).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from limiter.state.block_record import Block

DEFAULT_MAX_AGE = 5.0  # seconds
DEFAULT_MAX_TENANTS = 64


def block_version(raw: Any) -> int:
    """The stored version (``GET``'s answer: absent before the tenant's first write)."""
    return 0 if raw is None else int(raw)


@dataclass
class _Copy:
    version: int
    taken_at: float
    blocks: dict[str, Block] = field(default_factory=dict)
    payloads: dict[str, Any] = field(default_factory=dict)  # block id -> its record as read


class BlockSnapshots:
    def __init__(
        self,
        max_age: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
        max_tenants: int = DEFAULT_MAX_TENANTS,
    ):
        if not max_age >= 0:
            raise ValueError(f"max_age {max_age!r} must not be negative")
        if max_tenants < 1:
            raise ValueError(f"max_tenants {max_tenants!r} must be at least 1")
        self._max_age = max_age
        self._clock = clock
        self._max_tenants = max_tenants
        self._copies: OrderedDict[str, _Copy] = OrderedDict()

    def current(self, tenant: str, version: int) -> dict[str, Block] | None:
        """The tenant's blocks by id if the copy is of ``version`` and young enough, else
        None: the records must be read again (``replace``)."""
        copy = self._copies.get(tenant)
        if copy is None or copy.version != version:
            return None
        if self._clock() - copy.taken_at > self._max_age:
            return None
        self._copies.move_to_end(tenant)
        return copy.blocks

    def replace(self, tenant: str, version: int, records: Mapping[Any, Any]) -> dict[str, Block]:
        """The copy of the records read at ``version``; a record unchanged since the last
        copy is not decoded again."""
        old = self._copies.get(tenant)
        copy = _Copy(version, self._clock())
        for raw_id, payload in records.items():
            block_id = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
            if old is not None and old.payloads.get(block_id) == payload:
                block = old.blocks[block_id]
            else:
                block = Block(**json.loads(payload))
            copy.blocks[block_id] = block
            copy.payloads[block_id] = payload
        self._copies[tenant] = copy
        self._copies.move_to_end(tenant)
        while len(self._copies) > self._max_tenants:
            self._copies.popitem(last=False)
        return copy.blocks

    def wrote(self, tenant: str, version: int, block: Block, payload: str) -> None:
        """This process stored ``block`` (as ``payload``) and the version became
        ``version``: the copy takes it if nobody else wrote since it was taken, and is
        dropped otherwise."""
        copy = self._copies.get(tenant)
        if copy is None:
            return
        if version != copy.version + 1:
            del self._copies[tenant]
            return
        copy.version = version
        copy.blocks[block.id] = block
        copy.payloads[block.id] = payload.encode()

    def forget(self, tenant: str, block_ids: list[str]) -> None:
        """Records removed without moving the version (expired ones, pruned)."""
        copy = self._copies.get(tenant)
        if copy is None:
            return
        for block_id in block_ids:
            copy.blocks.pop(block_id, None)
            copy.payloads.pop(block_id, None)

    def drop(self, tenant: str) -> None:
        self._copies.pop(tenant, None)

    @property
    def tenants(self) -> int:
        """How many tenants' copies are kept."""
        return len(self._copies)
