"""The per-source detector and campaign detection as one detector for the detection loop.

``CoordinatedDetector`` hands every decision frame to all three: the ``AbuseDetector``
judges each subject on its own evidence, the ``CampaignDetector`` groups sources that are
only suspicious together by what they do, the ``TargetDetector`` by the account they all
press.  A round's verdicts are the campaign's first (so that an address both
would block is blocked as a member of its campaign, with the incident's id and shared
explanation), then the per-source ones for everyone else: an open campaign's members get
no per-source verdict of their address.  What the round changed about
campaigns is kept for the actions (``take_changes``), which turn it into incidents.
"""

from __future__ import annotations

import threading

import polars as pl

from detectors.campaigns import PRESSED, Campaign, CampaignChange, CampaignDetector
from detectors.detector import AbuseDetector
from detectors.registry import ModelRegistry
from detectors.targets import TargetDetector
from detectors.verdict import Verdict
from detectors.window import RollingWindow


class CoordinatedDetector:
    def __init__(
        self,
        detector: AbuseDetector,
        campaigns: CampaignDetector | None = None,
        targets: TargetDetector | None = None,
    ):
        self.detector = detector
        self.campaigns = campaigns if campaigns is not None else CampaignDetector()
        self.targets = (
            targets if targets is not None else TargetDetector(sources=self.campaigns.book)
        )
        self._inbox: list[pl.DataFrame] = []
        self._lock = threading.Lock()
        self._changes: list[CampaignChange] = []

    # what the loop and the benches use of the per-source detector
    @property
    def registry(self) -> ModelRegistry:
        return self.detector.registry

    @property
    def window(self) -> RollingWindow:
        return self.detector.window

    @property
    def subjects(self) -> dict[str, int]:
        return self.detector.subjects

    def observe(self, frame: pl.DataFrame) -> None:
        """Queue decisions for both detectors; cheap and thread-safe."""
        self.detector.observe(frame)
        with self._lock:
            self._inbox.append(frame)

    def evaluate(self, now_ms: int) -> list[Verdict]:
        with self._lock:
            frames, self._inbox = self._inbox, []
        if frames:  # one pass over the round's decisions: fewer, larger groups
            decisions = pl.concat(frames, how="vertical_relaxed")
            self.campaigns.book.observe(decisions)
            self.targets.book.observe(decisions)
        # pressed accounts first: the sources' book forgets the long-silent at the end of
        # the campaigns' round
        verdicts, changes = self.targets.evaluate(now_ms)
        found, more = self.campaigns.evaluate(now_ms)
        taken = {(v.tenant, v.subject) for v in verdicts}
        verdicts += [v for v in found if (v.tenant, v.subject) not in taken]
        changes += more
        with self._lock:
            self._changes.extend(changes)
        # a campaign's members are its to block, in this round and the next ones
        members = {
            (campaign.signature.tenant, ip)
            for campaign in (*self.targets.campaigns, *self.campaigns.campaigns)
            for ip in campaign.members
        }
        verdicts += [
            verdict
            for verdict in self.detector.evaluate(now_ms)
            if verdict.scope != "ip" or (verdict.tenant, verdict.subject) not in members
        ]
        return verdicts

    def resume(self, campaign: Campaign) -> bool:
        """Carry on a campaign a previous detector found: a pressed account's with the
        ``TargetDetector`` (``TargetDetector.resume``), any other with the
        ``CampaignDetector`` (``CampaignDetector.resume``)."""
        if campaign.signature.shape in PRESSED:
            return self.targets.resume(campaign)
        return self.campaigns.resume(campaign)

    def take_changes(self) -> list[CampaignChange]:
        """What the rounds since the last call changed about campaigns, oldest first."""
        with self._lock:
            changes, self._changes = self._changes, []
        return changes

    def close(self) -> None:
        self.detector.close()
