"""The report of a run: a table for people, or one JSON document for scripts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ratewatch.simulate.driver import Observations
from ratewatch.simulate.model import Timeline
from ratewatch.simulate.scorer import Score, Stats

MAX_LISTED = 10  # false-positive blocks shown in the text report
LAG_WARNING = 1.0  # seconds behind schedule worth a warning


@dataclass(frozen=True, slots=True)
class RunInfo:
    url: str
    seed: int
    scale: float
    timeline: Timeline
    scenarios: tuple[str, ...]


def _stats_json(stats: Stats) -> dict[str, Any]:
    return {
        "name": stats.name,
        "kind": stats.kind,
        "subjects": {"total": stats.subjects, "legit": stats.legit, "attack": stats.attack},
        "attack_blocked": stats.attack_blocked,
        "attack_blocked_within_window": stats.attack_blocked_in_window,
        "eligible": stats.eligible,
        "censored": stats.censored,
        "recall_within_window": stats.recall_in_window,
        "recall": stats.recall,
        "precision": stats.precision,
        "blocks": {"true": stats.blocks_true, "false": stats.blocks_false},
        "legit_blocked": stats.legit_blocked,
        "legit_blocked_share": stats.legit_share,
        "blocked_by_shadow": stats.shadow,
        "time_to_block": {
            "p50": stats.time_to_block(0.5),
            "p95": stats.time_to_block(0.95),
            "max": stats.time_to_block(1.0),
        },
    }


def to_json(score: Score, info: RunInfo, observations: Observations) -> dict[str, Any]:
    traffic = observations.traffic
    return {
        "run": {
            "url": info.url,
            "duration": info.timeline.duration,
            "attack_at": info.timeline.attack_at,
            "flash_at": info.timeline.flash_at,
            "tick": info.timeline.tick,
            "scale": info.scale,
            "seed": info.seed,
            "scenarios": list(info.scenarios),
            "started_at": observations.started_at,
            "recall_window": score.targets_set.window,
        },
        "traffic": {
            "checks_sent": traffic.checks_sent,
            "checks_answered": traffic.checks_answered,
            "checks_failed": traffic.checks_failed,
            "reasons": dict(sorted(traffic.reasons.items())),
            "max_lag": round(traffic.max_lag, 3),
            "poll_failures": traffic.poll_failures,
            "preexisting_blocks": observations.preexisting_blocks,
        },
        "scenarios": [_stats_json(stats) for stats in score.scenarios],
        "overall": _stats_json(score.overall),
        "blocks": [
            {
                "id": verdict.block.id,
                "scope": verdict.block.scope,
                "value": verdict.block.value,
                "mode": verdict.block.mode,
                "created_at": verdict.block.created_at,
                "reason": verdict.block.reason,
                "detector": verdict.block.detector,
                "matches": verdict.matches,
                "subjects": verdict.subjects,
                "scenarios": sorted(verdict.attack_scenarios | verdict.legit_scenarios),
            }
            for verdict in score.blocks
        ],
        "blocked_subjects": [
            {
                "scenario": outcome.subject.scenario,
                "label": outcome.subject.label,
                "scope": outcome.subject.scope,
                "value": outcome.subject.value,
                "onset": outcome.subject.onset,
                "blocked_at": outcome.blocked_at,
                "time_to_block": outcome.time_to_block,
                "mode": outcome.mode,
                "via": outcome.via,
                "block_id": outcome.block_id,
            }
            for outcome in score.outcomes
        ],
        "targets": [
            {"name": target.name, "passed": target.passed, "detail": target.detail}
            for target in score.targets
        ],
        "passed": score.passed,
    }


def _num(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


_HEADER = (
    f"{'scenario':<20} {'kind':<6} {'subjects':>8} {'blocked':>7} {'recall@W':>9} "
    f"{'recall':>6} {'precision':>9} {'legit blocked':>14}  time to block p50 / p95 / max"
)


def _row(stats: Stats) -> str:
    legit = "-" if not stats.legit else f"{stats.legit_blocked} ({stats.legit_share or 0:.1%})"
    ttb = "-"
    if stats.times_to_block:
        ttb = " / ".join(_num(stats.time_to_block(q), ".1f") for q in (0.5, 0.95, 1.0)) + " s"
    return (
        f"{stats.name:<20} {stats.kind:<6} {stats.subjects:>8} "
        f"{stats.legit_blocked + stats.attack_blocked:>7} {_num(stats.recall_in_window):>9} "
        f"{_num(stats.recall):>6} {_num(stats.precision):>9} {legit:>14}  {ttb}"
    )


def render(score: Score, info: RunInfo, observations: Observations) -> str:
    timeline, traffic = info.timeline, observations.traffic
    window = f"{score.targets_set.window:g}"
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(traffic.reasons.items()))
    verdicts = score.blocks
    lines = [
        f"RateWatch simulation against {info.url}: {timeline.duration:g} s, attacks from "
        f"{timeline.attack_at:g} s, flash crowd at {timeline.flash_at:g} s, "
        f"scale {info.scale:g}, seed {info.seed}",
        f"checks: {traffic.checks_sent} sent, {traffic.checks_answered} answered "
        f"({reasons or 'none'}), {traffic.checks_failed} failed",
        f"blocks: {len(verdicts)} seen, "
        f"{sum(1 for v in verdicts if v.matches == 'attack')} on attackers, "
        f"{sum(1 for v in verdicts if v.matches == 'legit')} on legitimate subjects, "
        f"{sum(1 for v in verdicts if v.matches == 'none')} on unlabelled ones; "
        f"{sum(1 for v in verdicts if v.block.mode == 'shadow')} in shadow mode",
        "",
        _HEADER.replace("recall@W", f"recall@{window}s"),
        *(_row(stats) for stats in score.scenarios),
        _row(score.overall),
    ]
    censored = [f"{s.name} {s.censored}" for s in score.scenarios if s.censored]
    if censored:
        lines.append(
            f"not in recall@{window}s (onset less than {window} s before the end): "
            + ", ".join(censored)
        )
    shadow = [f"{s.name} {s.shadow}" for s in score.scenarios if s.shadow]
    if shadow:
        lines.append("blocked only in shadow mode (would block): " + ", ".join(shadow))
    false_positives = [v for v in verdicts if v.matches == "legit"]
    for verdict in false_positives[:MAX_LISTED]:
        block = verdict.block
        lines.append(
            f"false positive: {block.scope} {block.value} ({block.id}, "
            f"{block.detector or 'manual'}, {block.mode}) at {block.created_at:g} s: "
            f"{verdict.subjects} subject(s) of {', '.join(sorted(verdict.legit_scenarios))}"
        )
    if len(false_positives) > MAX_LISTED:
        lines.append(f"… and {len(false_positives) - MAX_LISTED} more false positives")
    lines += ["", "targets:"]
    for target in score.targets:
        verdict_text = {True: "PASS", False: "FAIL", None: "?   "}[target.passed]
        lines.append(f"  {verdict_text}  {target.name}: {target.detail}")
    lines.append("result: " + {True: "PASS", False: "FAIL", None: "inconclusive"}[score.passed])
    lines += _warnings(observations)
    return "\n".join(lines)


def _warnings(observations: Observations) -> list[str]:
    traffic, warnings = observations.traffic, []
    if traffic.max_lag > LAG_WARNING:
        warnings.append(
            f"warning: the driver fell behind schedule by up to {traffic.max_lag:.1f} s "
            "(the service is too slow for this --scale)"
        )
    if traffic.checks_failed:
        warnings.append(f"warning: {traffic.checks_failed} checks got no answer")
    if traffic.poll_failures:
        warnings.append(f"warning: {traffic.poll_failures} polls of /v1/blocks failed")
    if observations.preexisting_blocks:
        warnings.append(
            f"note: {observations.preexisting_blocks} blocks were active before the run "
            "and are not counted (their subjects' blocked answers are)"
        )
    return warnings
