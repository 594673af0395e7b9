"""The ceiling of the gRPC stack: a ``RateLimitService`` that answers every call the same way.

It does what any rate limit service on grpcio's asyncio server must do and nothing else:
grpcio decodes the request and encodes a constant answer of the shape ``ratewatch serve
--grpc-port`` gives (one descriptor's status and its ``RateLimit`` headers, built by
``limiter.grpc.answers.respond``), on uvloop as the limiter's event loop.  Its calls per
second are what grpcio allows on this box in this hour; ``bench/grpc_throughput.py`` starts
it and prints the limiter's rate as a ratio of it.  By hand::

    python bench/grpc_ceiling.py --port 8004
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import uvloop
from envoy.service.ratelimit.v3.rls_pb2_grpc import (
    RateLimitServiceServicer,
    add_RateLimitServiceServicer_to_server,
)

from limiter.algorithms import NO_RETRY, Outcome, Reason
from limiter.grpc.answers import Verdict, respond

ANSWER = respond(
    [Verdict(1_000_000_000, 60, Outcome(True, 999_999_999, 60_000, NO_RETRY, Reason.OK))]
)


class ConstantService(RateLimitServiceServicer):  # type: ignore[misc]
    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:  # the protocol's name
        return ANSWER


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    add_RateLimitServiceServicer_to_server(ConstantService(), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
