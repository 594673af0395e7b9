"""The one exception of the simulator: what stops a run, as a message for the user."""

from __future__ import annotations


class SimulationError(Exception):
    """The run cannot go on: the service is unreachable, refused the key, or the input."""
