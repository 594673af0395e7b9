"""Request and response bodies of the check API, validated by msgspec.

These structs are the single source of both validation and the OpenAPI schemas, so the
published schema is what the server really accepts.  The answer to a check,
``CheckResult``, lives in ``limiter.results``, as the library answers with it too.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from limiter.algorithms import MAX_WINDOW_SECONDS, Algorithm
from limiter.results import CheckResult as CheckResult

MAX_KEY_LENGTH = 512
MAX_BATCH_CHECKS = 1000
MAX_COUNT = 10**12

Key = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="The thing being limited, e.g. `user:123`.",
    ),
]
Limit = Annotated[int, Meta(ge=1, le=MAX_COUNT, description="Requests allowed per window.")]
Window = Annotated[int, Meta(ge=1, le=MAX_WINDOW_SECONDS, description="Window in seconds.")]
Cost = Annotated[
    int, Meta(ge=0, le=MAX_COUNT, description="Units this request uses; 0 reads without using.")
]
ShortText = Annotated[str, Meta(min_length=1, max_length=MAX_KEY_LENGTH)]
LongText = Annotated[str, Meta(max_length=2048)]
MAX_SEGMENT_LENGTH = 64
Segment = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_SEGMENT_LENGTH,
        description="Customer segment or tier, e.g. `pro`; defaults to the API key's segment.",
    ),
]


# bounded by length only: a regular expression here would cost every check by policy more
# than its lookup, and a name no policy can have is answered as an unknown policy anyway
PolicyName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        description="A named policy of the tenant (`PUT /v1/policies/{name}`), instead of "
        "`limit` and `window`.",
    ),
]


class CheckRequest(msgspec.Struct, kw_only=True):
    """One rate-limit check: `limit` and `window`, or a named `policy` (not both).
    `limit` × `window` may be at most 2·10¹² (limit·seconds)."""

    key: Key
    limit: Limit | None = None
    window: Window | None = None
    policy: PolicyName | None = None
    cost: Cost = 1
    algorithm: Algorithm | None = None
    ip: Annotated[str, Meta(max_length=64, description="Client IP; blocks by IP apply.")] | None = (
        None
    )
    route: LongText | None = None
    user_agent: LongText | None = None
    user_id: ShortText | None = None
    segment: Segment | None = None


class BatchRequest(msgspec.Struct, kw_only=True):
    checks: Annotated[list[CheckRequest], Meta(min_length=1, max_length=MAX_BATCH_CHECKS)]


class BatchResult(msgspec.Struct, kw_only=True):
    results: list[CheckResult]
