"""Where the repository is, for tests that read its files (docs, compose, dashboards) or run
a subprocess from its root, wherever the test module sits in ``tests/``."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
