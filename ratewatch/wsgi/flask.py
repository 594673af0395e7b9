"""Flask adapter: ``RateWatchFlask(app, limit=100, window=60)`` or the ``init_app`` pattern.

It wraps ``app.wsgi_app`` in :class:`~ratewatch.wsgi.middleware.RateLimitWSGIMiddleware`.
Settings come from the keyword arguments over ``app.config["RATEWATCH"]`` (a dict, names as
in Django's ``settings.RATEWATCH``).  Flask is imported here only: it is not a dependency
of the SDK.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from ratewatch.client import RateWatch
from ratewatch.wsgi.middleware import RateLimitWSGIMiddleware
from ratewatch.wsgi.settings import build

__all__ = ["RateWatchFlask"]


class RateWatchFlask:
    """Rate limit every request of a Flask app (see :mod:`ratewatch.wsgi.settings`).

    Without a ``client`` option one is made from ``api_key``/``url``/``timeout`` (or
    ``$RATEWATCH_API_KEY``/``$RATEWATCH_URL``); :meth:`close` closes the clients made here.
    """

    def __init__(self, app: Flask | None = None, **options: Any):
        self.options = options
        self._owned: list[RateWatch] = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Wrap ``app.wsgi_app``; a bad setting raises ``ValueError`` naming it."""
        settings = {**app.config.get("RATEWATCH", {}), **self.options}
        gate, client, owned = build(settings, "RATEWATCH")
        if owned:
            self._owned.append(client)
        app.wsgi_app = RateLimitWSGIMiddleware(app.wsgi_app, gate=gate)  # type: ignore[method-assign]
        app.extensions["ratewatch"] = gate

    def close(self) -> None:
        """Close the RateWatch clients this extension made."""
        while self._owned:
            self._owned.pop().close()
