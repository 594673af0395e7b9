"""Tracing of the check path with OpenTelemetry: optional, and free when off.

Off unless asked for (``ratewatch serve --tracing``, ``RATEWATCH_TRACING=1``), and off again
when OpenTelemetry's own switch says so (``OTEL_SDK_DISABLED=true``).  The choice is made
once, at start: with tracing off nothing of OpenTelemetry is imported and the plain check
handler serves every request; with it on, the traced handler (``limiter.tracing.handler``)
and the traced store call (``limiter.tracing.setup``) take their places.  This module
imports nothing of OpenTelemetry, so the limiter may ask it on every start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from limiter.errors import ConfigError

if TYPE_CHECKING:
    from limiter.tracing.setup import Tracing

OTEL_EXTRA_HINT = "tracing needs its extra: pip install 'ratewatch[otel]'"


def disabled_by_sdk(environ: Mapping[str, str] = os.environ) -> bool:
    """OpenTelemetry's own off switch, ``OTEL_SDK_DISABLED`` (``true``, any case)."""
    return environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def check_tracing(asked: bool, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether tracing is on; ConfigError (naming the bad variable, or the missing extra)
    when it is asked for and cannot run.  Starts nothing: for the checks before a start."""
    if not asked or disabled_by_sdk(environ):
        return False
    try:
        from limiter.tracing.setup import check_environment
    except ImportError:
        raise ConfigError(OTEL_EXTRA_HINT) from None
    check_environment(environ)
    return True


def start_tracing(asked: bool, environ: Mapping[str, str] = os.environ) -> Tracing | None:
    """The tracing of this process (its exporter started), or None when it is off."""
    if not check_tracing(asked, environ):
        return None
    from limiter.tracing.setup import Tracing

    return Tracing.from_environment(environ)
