"""Django adapter: ``ratewatch.wsgi.django.RateWatchMiddleware``, configured from settings::

    MIDDLEWARE = ["ratewatch.wsgi.django.RateWatchMiddleware", ...]
    RATEWATCH = {"LIMIT": 100, "WINDOW": 60, "KEY": "ip", "EXCLUDE": ["/health"]}

Names as in :mod:`ratewatch.wsgi.settings`.  Django is imported here only: it is not a
dependency of the SDK.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from ratewatch.wsgi.settings import build

__all__ = ["RateWatchMiddleware"]


class RateWatchMiddleware:
    """Check each request with RateWatch before the views; 429 or 503 answers come from here.

    The settings are read once, when Django loads its middleware; a bad one raises
    ``ImproperlyConfigured`` naming it.  A client made here (no ``CLIENT`` setting) is
    closed when Django drops the middleware.
    """

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]):
        self.get_response = get_response
        try:
            self.gate, self.client, owned = build(getattr(settings, "RATEWATCH", None), "RATEWATCH")
        except ValueError as error:
            raise ImproperlyConfigured(str(error)) from error
        if owned:  # Django has no shutdown hook: close it with the middleware
            weakref.finalize(self, self.client.close)

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        decision = self.gate.decide(request.META)
        if decision.answer is not None:
            answer = decision.answer
            status = int(answer.status.split(" ", 1)[0])
            response = HttpResponse(answer.body, status=status)
            for name, value in answer.headers:
                response.headers[name] = value
            return response
        response_ = self.get_response(request)
        for name, value in decision.headers:
            if name not in response_.headers:
                response_.headers[name] = value
        return response_
