"""What the consumers make of a shadow policy's would-be denial: the analytics writer takes
the event (it does not store the policy fields), the detectors see what was answered."""

from __future__ import annotations

from analytics.writer import _frame
from detectors.features import decisions_frame
from tests.support.events import decision


def test_the_detectors_see_a_shadow_denial_as_the_allowed_answer_it_was() -> None:
    frame = decisions_frame(
        [
            decision(allowed=False, reason="limit", shadow=True, policy="trial"),
            decision(allowed=False, reason="blocked", shadow=True, policy="trial"),
            decision(allowed=False, reason="limit", policy="paid"),
        ]
    )
    assert frame["allowed"].to_list() == [True, False, False]
    assert frame["reason"].to_list() == ["ok", "blocked", "limit"]


def test_the_analytics_writer_takes_events_with_a_policy() -> None:
    shaped = _frame([decision(policy="free", shadow=True, allowed=False, reason="limit")])
    assert shaped["allowed"].to_list() == [False]
    assert "policy" not in shaped.columns
