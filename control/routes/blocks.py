"""``/v1/blocks``: manual blocks of an ip, key or user id for a TTL, and the detectors'
dynamic ones.  Every key of the tenant may list them (a denied caller should be able to
see why); only admin keys create or lift them."""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from control.audit import AuditTrail
from control.auth import ControlAuth
from control.durable.records import DurableRecords
from control.http import client_ip, json_response, read_json
from control.schemas.requests import BlockCreate
from limiter.state.blocks import BlockStore
from stream.audit import BLOCK_CREATED, BLOCK_REMOVED

_block_create = msgspec.json.Decoder(BlockCreate)


class BlockRoutes:
    def __init__(
        self, auth: ControlAuth, blocks: BlockStore, audit: AuditTrail, durable: DurableRecords
    ):
        self._auth = auth
        self._blocks = blocks
        self._audit = audit
        self._durable = durable

    def routes(self) -> list[Route]:
        return [
            Route("/v1/blocks", self.list_blocks, methods=["GET"]),
            Route("/v1/blocks", self.create_block, methods=["POST"]),
            Route("/v1/blocks/{block_id}", self.remove_block, methods=["DELETE"]),
        ]

    async def list_blocks(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=False)
        blocks = await self._blocks.active(principal.tenant)
        return json_response({"blocks": [block.public() for block in blocks]})

    async def create_block(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        body: BlockCreate = await read_json(request, _block_create)
        await self._durable.settled()
        block = await self._blocks.create(
            principal.tenant, body.scope, body.value, body.ttl, body.reason, mode=body.mode
        )
        await self._durable.block_saved(principal.tenant, block)
        await self._audit.record(
            principal,
            BLOCK_CREATED,
            block.id,
            {
                "scope": block.scope,
                "value": block.value,
                "ttl": body.ttl,
                "reason": block.reason,
                "mode": block.mode,
                "source": "manual",
            },
            client_ip(request),
        )
        return json_response(block.public(), 201)

    async def remove_block(self, request: Request) -> Response:
        principal = await self._auth.principal(request, admin=True)
        await self._durable.settled()
        block_id = request.path_params["block_id"]
        # journaled first: a lifted block is never restored
        await self._durable.block_removed(
            principal.tenant, await self._blocks.get(principal.tenant, block_id)
        )
        block = await self._blocks.remove(principal.tenant, block_id, by_operator=True)
        await self._audit.record(
            principal,
            BLOCK_REMOVED,
            block.id,
            {"scope": block.scope, "value": block.value, "source": block.source},
            client_ip(request),
        )
        return json_response({**block.public(), "removed": True})
