"""The exceptions of the RateWatch SDK.

Every error the SDK raises is a :class:`RateWatchError`.  Errors the service answered with
carry its HTTP ``status`` and its RFC 9457 problem details as ``problem`` (a plain dict).
"""

from __future__ import annotations

from typing import Any


class RateWatchError(Exception):
    """Base class of every SDK error.

    ``status`` is the HTTP status of the service's answer (``None`` when there was no
    answer), ``problem`` its problem-details document (empty when it sent none).
    """

    def __init__(
        self, message: str, *, status: int | None = None, problem: dict[str, Any] | None = None
    ):
        super().__init__(message)
        self.status = status
        self.problem: dict[str, Any] = dict(problem or {})

    @property
    def detail(self) -> str | None:
        """The problem's human-readable ``detail``, if the service sent one."""
        detail = self.problem.get("detail")
        return detail if isinstance(detail, str) else None


class AuthenticationError(RateWatchError):
    """The API key is missing, invalid or revoked (401), or may not do this (403)."""


class InvalidRequest(RateWatchError):
    """The service refused the request's content (400, 413 or 422); see ``problem``."""


class ServiceUnavailable(RateWatchError):
    """The service could not be reached, timed out, answered 5xx or answered garbage.

    With ``fail_open=True`` (the default) checks return an allowed result instead of
    raising this.
    """
