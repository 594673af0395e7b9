"""Sync and async clients of the RateWatch check API (``POST /v1/check``, ``/v1/batch``).

Both clients keep one pooled HTTP connection set for their lifetime; use them as context
managers or call ``close()``.  When the service cannot answer (unreachable, timeout, 5xx,
garbage) a client made with ``fail_open=True`` returns an *allowed* result whose ``reason``
is ``"client_fail_open"`` instead of raising :class:`ServiceUnavailable`.  Given a signed
key's signing secret (``signing_secret`` or ``$RATEWATCH_SIGNING_SECRET``), they sign every
request (:mod:`ratewatch.signing`).
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Self

import httpx

from ratewatch.errors import (
    AuthenticationError,
    InvalidRequest,
    RateWatchError,
    ServiceUnavailable,
)
from ratewatch.signing import RequestSigner

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "FAIL_OPEN_REASON",
    "AsyncRateWatch",
    "Check",
    "CheckResult",
    "RateWatch",
]

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 2.0
FAIL_OPEN_REASON = "client_fail_open"
"""The ``reason`` of a result the client made up because the service could not answer."""

_USER_AGENT = "ratewatch-python"
log = logging.getLogger("ratewatch.client")


@dataclass(frozen=True, slots=True)
class Check:
    """One check of a batch; the fields of the request body of ``POST /v1/check``: ``limit``
    and ``window``, or the name of one of the tenant's ``policy``s (docs/policies.md)."""

    key: str
    limit: int | None = None
    window: int | None = None
    cost: int = 1
    algorithm: str | None = None
    ip: str | None = None
    route: str | None = None
    user_agent: str | None = None
    user_id: str | None = None
    segment: str | None = None  # customer segment (tier); default: the API key's
    policy: str | None = None  # a named policy instead of limit and window

    def __post_init__(self) -> None:
        if self.policy is None and (self.limit is None or self.window is None):
            raise ValueError("a check needs limit and window, or a policy")
        if self.policy is not None and (self.limit is not None or self.window is not None):
            raise ValueError("a check takes limit and window, or a policy, not both")

    def to_json(self) -> dict[str, Any]:
        """The request body: every field that is set (``None`` fields are left out)."""
        return {name: value for name, value in asdict(self).items() if value is not None}


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The service's decision on one check.

    ``reset_in`` and ``retry_after`` are seconds; ``retry_after`` is ``None`` when the check
    was allowed or when retrying cannot help (e.g. the cost exceeds the limit).
    """

    allowed: bool
    remaining: int
    reset_in: int
    retry_after: int | None
    limit: int
    reason: str

    @classmethod
    def failed_open(cls, check: Check) -> CheckResult:
        """The allowed result a fail-open client returns when the service cannot answer:
        nothing was counted, so it looks like the first request of an empty window (for a
        check by policy, whose windows only the service knows: ``limit`` and ``remaining``
        0)."""
        limit = check.limit or 0
        return cls(
            allowed=True,
            remaining=max(0, limit - check.cost),
            reset_in=check.window or 0,
            retry_after=None,
            limit=limit,
            reason=FAIL_OPEN_REASON,
        )


CheckLike = Check | Mapping[str, Any]


def _as_check(item: CheckLike) -> Check:
    return item if isinstance(item, Check) else Check(**item)


def _settings(api_key: str | None, base_url: str | None) -> tuple[str, str]:
    key = api_key if api_key is not None else os.environ.get("RATEWATCH_API_KEY")
    if not key:
        raise ValueError("no RateWatch API key: pass api_key or set RATEWATCH_API_KEY")
    url = base_url or os.environ.get("RATEWATCH_URL") or DEFAULT_URL
    return key, url.rstrip("/")


def _verify(verify: bool | ssl.SSLContext, ca_file: str | os.PathLike[str] | None) -> Any:
    """How the server's certificate is checked: ``ca_file`` (or ``$RATEWATCH_CA_FILE``), a
    PEM bundle of the CAs to trust (a self-signed certificate itself), else ``verify``
    (True: the system's CAs; an ``ssl.SSLContext`` of your own; False: no check)."""
    ca_file = ca_file if ca_file is not None else os.environ.get("RATEWATCH_CA_FILE") or None
    if ca_file is not None and verify is not False:
        return ssl.create_default_context(cafile=os.fspath(ca_file))
    return verify


def _signer(signing_secret: str | None) -> RequestSigner | None:
    secret = (
        signing_secret if signing_secret is not None else os.environ.get("RATEWATCH_SIGNING_SECRET")
    )
    return RequestSigner(secret) if secret else None


def _headers(api_key: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {api_key}",
        "User-Agent": _USER_AGENT,
        "Accept": "application/json",
    }


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict):
        return document
    return {"status": response.status_code, "detail": response.text[:500]}


def _raise_for_status(response: httpx.Response) -> None:
    status = response.status_code
    if status == 200:
        return
    problem = _problem(response)
    title = problem.get("title") or response.reason_phrase
    detail = problem.get("detail")
    message = f"{status} {title}" + (f": {detail}" if detail else "")
    error: type[RateWatchError] = RateWatchError
    if status in (401, 403):
        error = AuthenticationError
    elif status in (400, 413, 422):
        error = InvalidRequest
    elif status >= 500:
        error = ServiceUnavailable
    raise error(message, status=status, problem=problem)


def _malformed(what: str) -> ServiceUnavailable:
    return ServiceUnavailable(f"the service answered a malformed response: {what}", status=200)


def _int(data: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = data.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _malformed(f"{name!r} is {value!r}")
    return value


def _result(data: Any, check: Check) -> CheckResult:
    if not isinstance(data, dict) or not isinstance(data.get("allowed"), bool):
        raise _malformed("no boolean 'allowed'")
    allowed: bool = data["allowed"]
    retry_after = data.get("retry_after")
    reason = data.get("reason", "ok" if allowed else "limit")
    if not isinstance(reason, str):
        raise _malformed(f"'reason' is {reason!r}")
    return CheckResult(
        allowed=allowed,
        remaining=_int(data, "remaining"),
        reset_in=_int(data, "reset_in"),
        retry_after=None if retry_after is None else _int(data, "retry_after"),
        limit=_int(data, "limit", check.limit),
        reason=reason,
    )


def _json(response: httpx.Response) -> Any:
    _raise_for_status(response)
    try:
        return response.json()
    except ValueError:
        raise _malformed("not JSON") from None


def _check_result(response: httpx.Response, check: Check) -> CheckResult:
    return _result(_json(response), check)


def _batch_results(response: httpx.Response, checks: list[Check]) -> list[CheckResult]:
    data = _json(response)
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list) or len(results) != len(checks):
        raise _malformed(f"expected {len(checks)} results")
    return [_result(item, check) for item, check in zip(results, checks, strict=True)]


def _unreachable(exc: httpx.RequestError) -> ServiceUnavailable:
    return ServiceUnavailable(f"RateWatch did not answer: {type(exc).__name__}: {exc}")


class _ClientBase:
    def __init__(self, fail_open: bool):
        self.fail_open = fail_open

    def _fail_open(self, error: ServiceUnavailable, checks: list[Check]) -> list[CheckResult]:
        if not self.fail_open:
            raise error
        log.warning(
            "RateWatch unavailable, allowing %d check(s) (fail open): %s", len(checks), error
        )
        return [CheckResult.failed_open(check) for check in checks]


class RateWatch(_ClientBase):
    """Synchronous client.  Thread-safe; reuses connections until :meth:`close`.

    ``api_key`` defaults to ``$RATEWATCH_API_KEY``, ``base_url`` to ``$RATEWATCH_URL`` and
    then to ``http://127.0.0.1:8080``; ``timeout`` is in seconds.  For an ``https://`` URL
    whose certificate the system's CAs do not vouch for (a private CA, a self-signed
    certificate) pass ``ca_file`` (or set ``$RATEWATCH_CA_FILE``), or an ``ssl.SSLContext``
    as ``verify``.  For a signed key pass its ``signing_secret`` (or set
    ``$RATEWATCH_SIGNING_SECRET``): every request is then signed.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        fail_open: bool = True,
        *,
        transport: httpx.BaseTransport | None = None,
        verify: bool | ssl.SSLContext = True,
        ca_file: str | os.PathLike[str] | None = None,
        signing_secret: str | None = None,
    ):
        super().__init__(fail_open)
        key, self.base_url = _settings(api_key, base_url)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=_headers(key),
            auth=_signer(signing_secret),
            timeout=timeout,
            transport=transport,
            verify=_verify(verify, ca_file),
        )

    def check(
        self,
        key: str,
        *,
        limit: int | None = None,
        window: int | None = None,
        cost: int = 1,
        algorithm: str | None = None,
        ip: str | None = None,
        route: str | None = None,
        user_agent: str | None = None,
        user_id: str | None = None,
        segment: str | None = None,
        policy: str | None = None,
    ) -> CheckResult:
        """Count ``cost`` against ``key`` (``limit`` per ``window`` seconds, or the windows
        of the named ``policy``) and decide."""
        check = Check(
            key, limit, window, cost, algorithm, ip, route, user_agent, user_id, segment, policy
        )
        try:
            return _check_result(self._post("/v1/check", check.to_json()), check)
        except ServiceUnavailable as error:
            return self._fail_open(error, [check])[0]

    def batch(self, checks: Iterable[CheckLike]) -> list[CheckResult]:
        """Decide several checks (``Check`` objects or dicts) in one request, in order."""
        items = [_as_check(item) for item in checks]
        if not items:
            return []
        try:
            response = self._post("/v1/batch", {"checks": [c.to_json() for c in items]})
            return _batch_results(response, items)
        except ServiceUnavailable as error:
            return self._fail_open(error, items)

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return self._http.post(path, json=body)
        except httpx.RequestError as exc:
            raise _unreachable(exc) from exc

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncRateWatch(_ClientBase):
    """Asynchronous client (asyncio or trio); the same options as :class:`RateWatch`."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        fail_open: bool = True,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: bool | ssl.SSLContext = True,
        ca_file: str | os.PathLike[str] | None = None,
        signing_secret: str | None = None,
    ):
        super().__init__(fail_open)
        key, self.base_url = _settings(api_key, base_url)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_headers(key),
            auth=_signer(signing_secret),
            timeout=timeout,
            transport=transport,
            verify=_verify(verify, ca_file),
        )

    async def check(
        self,
        key: str,
        *,
        limit: int | None = None,
        window: int | None = None,
        cost: int = 1,
        algorithm: str | None = None,
        ip: str | None = None,
        route: str | None = None,
        user_agent: str | None = None,
        user_id: str | None = None,
        segment: str | None = None,
        policy: str | None = None,
    ) -> CheckResult:
        """Count ``cost`` against ``key`` (``limit`` per ``window`` seconds, or the windows
        of the named ``policy``) and decide."""
        check = Check(
            key, limit, window, cost, algorithm, ip, route, user_agent, user_id, segment, policy
        )
        try:
            return _check_result(await self._post("/v1/check", check.to_json()), check)
        except ServiceUnavailable as error:
            return self._fail_open(error, [check])[0]

    async def batch(self, checks: Iterable[CheckLike]) -> list[CheckResult]:
        """Decide several checks (``Check`` objects or dicts) in one request, in order."""
        items = [_as_check(item) for item in checks]
        if not items:
            return []
        try:
            response = await self._post("/v1/batch", {"checks": [c.to_json() for c in items]})
            return _batch_results(response, items)
        except ServiceUnavailable as error:
            return self._fail_open(error, items)

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return await self._http.post(path, json=body)
        except httpx.RequestError as exc:
            raise _unreachable(exc) from exc

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()

    aclose = close

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
