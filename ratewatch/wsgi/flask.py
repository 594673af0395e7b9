"""Flask adapter: ``RateWatchFlask(app, limit=100, window=60)`` or the ``init_app`` pattern.

It wraps ``app.wsgi_app`` in :class:`~ratewatch.wsgi.middleware.RateLimitWSGIMiddleware`.
Settings come from the keyword arguments over ``app.config["RATEWATCH"]`` (a dict, names as
in Django's ``settings.RATEWATCH``).  Flask is imported here only: it is not a dependency
of the SDK.  :meth:`RateWatchFlask.limit` gives one view a limit of its own on top.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec

from flask import Flask, current_app, make_response, request
from flask.typing import ResponseReturnValue

from ratewatch.client import RateWatch
from ratewatch.wsgi.gate import RateLimitGate
from ratewatch.wsgi.keys import Environ, KeyFunc, ip_key
from ratewatch.wsgi.middleware import RateLimitWSGIMiddleware
from ratewatch.wsgi.settings import build

__all__ = ["RateWatchFlask"]

P = ParamSpec("P")
View = Callable[P, ResponseReturnValue]


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

    def limit(
        self,
        limit: int | None = None,
        window: int | None = None,
        *,
        key: KeyFunc | None = None,
        cost: int = 1,
        policy: str | None = None,
    ) -> Callable[[View[P]], Callable[P, ResponseReturnValue]]:
        """Decorate a view: ``limit`` per ``window`` seconds (or the tenant's named
        ``policy``) for it alone, per ``key``
        (default: the client IP), counted apart from the app-wide limit (the key gets the
        view's endpoint appended).  Its ``RateLimit`` headers win over the app-wide ones."""

        def decorator(view: View[P]) -> Callable[P, ResponseReturnValue]:
            @wraps(view)
            def limited(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
                app_gate: RateLimitGate = current_app.extensions["ratewatch"]
                base = key or ip_key(app_gate.trust_proxies)
                endpoint = request.endpoint or view.__name__

                def view_key(environ: Environ) -> str | None:
                    found = base(environ)
                    return None if found is None else f"{found}|view:{endpoint}"

                gate = RateLimitGate(
                    app_gate.client,
                    limit=limit,
                    window=window,
                    policy=policy,
                    key=view_key,
                    cost=cost,
                    algorithm=app_gate.algorithm,
                    trust_proxies=app_gate.trust_proxies,
                    fail_open=app_gate.fail_open,
                )
                decision = gate.decide(request.environ)
                if decision.answer is not None:
                    answer = decision.answer
                    return current_app.response_class(
                        answer.body, status=answer.status, headers=answer.headers
                    )
                response = make_response(view(*args, **kwargs))
                for name, value in decision.headers:
                    response.headers[name] = value
                return response

            return limited

        return decorator
