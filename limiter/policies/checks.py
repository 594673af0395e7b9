"""A check by policy: built from what the policy resolves to, decided like any other.

``policy_check`` turns a ``Resolved`` policy into one ``Check`` carrying every window; the
decider (``FailoverDecider``: Redis's check script, or the local store under the failure
policy) decides its windows atomically and says which window decided
(``limiter.algorithms.window_of``).
``decided_check`` is that check as its deciding window (what the answer, the headers and
the decision event describe), and ``answered`` is what the caller is told: in shadow mode a
denial by the policy's limits is answered allowed.
"""

from __future__ import annotations

from limiter.algorithms import NO_RETRY, Algorithm, Outcome, Reason, window_of, with_window
from limiter.policies.model import Resolved, compiled
from limiter.store.base import Check

# what shadow mode turns into an allowed answer: the policy's own verdicts, not a block or
# the failure policy's
SHADOWED = frozenset({Reason.LIMIT, Reason.COST_EXCEEDS_LIMIT})


def policy_check(
    tenant: str,
    key: str,
    resolved: Resolved,
    default_algorithm: Algorithm,
    cost: int = 1,
    ip: str | None = None,
    user_id: str | None = None,
    route: str | None = None,
    user_agent: str | None = None,
    segment: str | None = None,
    started_ns: int = 0,
) -> Check:
    """The check of ``key`` against ``resolved`` (``PolicyCache.resolve``); ``ip`` must be
    normalized already (``limiter.state.blocks.normalize_ip``)."""
    if not resolved.items:  # made by hand, not by ``resolve``: derive what it lacks
        resolved = compiled(resolved)
    first = resolved.limits[0]
    return Check(
        tenant,
        key,
        resolved.algorithm or default_algorithm,
        first.limit,
        first.window * 1000,
        cost,
        ip,
        user_id,
        route,
        user_agent,
        segment,
        started_ns,
        resolved.windows_ms,
        resolved.policy,
        resolved.shadow,
    )


def decided_check(check: Check, outcome: Outcome) -> Check:
    """``check`` as the window that decided it: its ``limit`` and ``window_ms`` are what
    the answer and the decision event report."""
    window = window_of(outcome)
    if not window:
        return check
    limit, window_ms = check.windows[window]
    # what ``check._replace(limit=limit, window_ms=window_ms)`` makes, built directly: a
    # NamedTuple's _replace maps over every field, a few times slower
    return tuple.__new__(Check, (*check[:3], limit, window_ms, *check[5:]))


def answered(check: Check, outcome: Outcome) -> Outcome:
    """What the caller is answered: in shadow mode, a denial by the policy's limits is
    allowed (nothing was used: the decision event keeps the would-be denial)."""
    if not check.shadow or outcome.allowed or outcome.reason not in SHADOWED:
        return outcome
    return with_window(Outcome(True, 0, outcome.reset_ms, NO_RETRY, Reason.OK), window_of(outcome))


def conclude(check: Check, outcome: Outcome) -> tuple[Check, Outcome, int]:
    """``decided_check``, ``answered`` and the deciding window's index at once (the check
    path's form: a one-window check in enforce mode costs a test)."""
    if not check.windows and not check.shadow:
        return check, outcome, 0
    return decided_check(check, outcome), answered(check, outcome), window_of(outcome)


def policy_header(check: Check, name: str = "default") -> bytes:
    """The ``RateLimit-Policy`` header value: every window of the check (the IETF draft
    lets a server list several policies), each item named after the policy and window."""
    if not check.windows:
        return b'"%s";q=%d;w=%d' % (name.encode(), check.limit, check.window_ms // 1000)
    items = [
        b'"%s-%d";q=%d;w=%d' % (name.encode(), window_ms // 1000, limit, window_ms // 1000)
        for limit, window_ms in check.windows
    ]
    return b", ".join(items)
