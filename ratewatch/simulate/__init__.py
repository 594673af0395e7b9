"""``ratewatch simulate``: labelled synthetic traffic against the HTTP API, and a score of
the blocks it drew.

- ``model``, ``agents``, ``legit``, ``attacks``, ``scenarios``: the traffic model
  (``attack_checks``: what the attacks and the attack families both send);
- ``driver``: sends each tick's checks as ``/v1/batch`` requests in real time and watches
  for blocks;
- ``scorer``: labels against observed blocks; ``report``: text and JSON.

Only httpx, click and the standard library: it runs from the light install.
"""

from ratewatch.simulate.model import Request, Subject, Timeline
from ratewatch.simulate.scenarios import SCENARIOS, Simulation

__all__ = ["SCENARIOS", "Request", "Simulation", "Subject", "Timeline"]
