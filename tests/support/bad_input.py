"""Check requests the limiter must refuse, each with the status it answers: shared by the
tests of the check API and of its published schema (every body refused here, bar those a
JSON schema cannot describe, must be invalid by it too)."""

from __future__ import annotations

BAD_CHECKS: list[tuple[object, int]] = [
    ({"key": "k", "limit": -1, "window": 60}, 422),
    ({"key": "k", "limit": 0, "window": 60}, 422),
    ({"key": "k", "limit": 10**13, "window": 60}, 422),
    ({"key": "k", "limit": 10, "window": 0}, 422),
    ({"key": "k", "limit": 10, "window": 10**9}, 422),
    ({"key": "k", "limit": 10**9, "window": 10**6}, 422),  # limit × window too large
    ({"key": "k", "limit": 10, "window": 60, "cost": -1}, 422),
    ({"key": "k", "limit": 10, "window": 60, "cost": 1.5}, 422),
    ({"key": "k", "limit": "10", "window": 60}, 422),
    ({"key": "k", "limit": True, "window": 60}, 422),
    ({"key": "", "limit": 10, "window": 60}, 422),
    ({"key": "x" * 10_000, "limit": 10, "window": 60}, 422),
    ({"key": 5, "limit": 10, "window": 60}, 422),
    ({"limit": 10, "window": 60}, 422),
    ({"key": "k", "window": 60}, 422),  # neither limit and window nor a policy
    ({"key": "k", "limit": 10, "window": 60, "policy": "free"}, 422),  # both
    ({"key": "k", "limit": 10, "window": 60, "algorithm": "leaky"}, 422),
    ({"key": "k", "limit": 10, "window": 60, "ip": "999.1.1.1"}, 422),
    ({"key": "k", "limit": 10, "window": 60, "user_id": "u" * 10_000}, 422),
    ([1, 2, 3], 422),
    ("just a string", 422),
    (None, 400),  # no body at all
]
