"""The limiter's HTTP API: a raw ASGI fast path for checks, Starlette for the rest."""

from limiter.http.app import create_app

__all__ = ["create_app"]
