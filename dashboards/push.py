"""Uploading the dashboards (and, if asked, the data source) to a running Grafana over its
HTTP API, for a Grafana that does not provision them from files.

Three endpoints, all long stable: ``GET``/``POST /api/folders`` (the RateWatch folder),
``POST /api/dashboards/db`` with ``overwrite: true`` (create or replace by uid), and
``GET``/``POST``/``PUT /api/datasources[/uid/<uid>]``.  Authentication is a service
account token (``Authorization: Bearer``) or a user's basic auth taken from the URL
(``http://admin:secret@host:3000``).  Uses httpx, the light install's HTTP client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from analytics.tables import DATABASE
from dashboards.catalog import DASHBOARDS
from dashboards.errors import GrafanaError
from dashboards.provisioning import FOLDER_TITLE, FOLDER_UID, QUERY_TIMEOUT_SECONDS
from dashboards.render import DATASOURCE_NAME, DATASOURCE_TYPE, DATASOURCE_UID, render

TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Pushed:
    title: str
    url: str


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its user info, and the user info as basic-auth credentials."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GrafanaError(f"Grafana URL {redact(url)!r} is not http(s)://host[:port]")
    port = _port(url)
    if parts.username is None:
        return url, None
    host = parts.hostname if port is None else f"{parts.hostname}:{port}"
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return bare, (unquote(parts.username), unquote(parts.password or ""))


def _port(url: str) -> int | None:
    try:
        return urlsplit(url).port
    except ValueError:
        raise GrafanaError(f"URL {redact(url)!r} has a bad port") from None


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{parts.username}:***@{netloc}", *parts[2:]))


def datasource_model(clickhouse_url: str) -> dict[str, Any]:
    """The RateWatch data source for a ClickHouse server at ``http(s)://user:pass@host:port``,
    as Grafana reaches it (the plugin's HTTP protocol)."""
    parts = urlsplit(clickhouse_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise GrafanaError(
            f"ClickHouse URL {redact(clickhouse_url)!r} is not http(s)://user:password@host:port"
        )
    secure = parts.scheme == "https"
    port = _port(clickhouse_url)
    return {
        "name": DATASOURCE_NAME,
        "uid": DATASOURCE_UID,
        "type": DATASOURCE_TYPE,
        "access": "proxy",
        "jsonData": {
            "host": parts.hostname,
            "port": port or (8443 if secure else 8123),
            "protocol": "http",
            "secure": secure,
            "username": unquote(parts.username or "default"),
            "defaultDatabase": DATABASE,
            "queryTimeout": str(QUERY_TIMEOUT_SECONDS),
        },
        "secureJsonData": {"password": unquote(parts.password or "")},
    }


class Grafana:
    """The few Grafana API calls the push needs; every failure is a one-line GrafanaError."""

    def __init__(
        self, url: str, *, token: str | None = None, transport: httpx.BaseTransport | None = None
    ) -> None:
        base, basic = split_credentials(url.rstrip("/"))
        self._display = redact(url)
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=base,
            headers=headers,
            auth=None if token or basic is None else httpx.BasicAuth(*basic),
            timeout=TIMEOUT_SECONDS,
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        body: Mapping[str, Any] | None = None,
        *,
        missing_ok: bool = False,
    ) -> dict[str, Any] | None:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise GrafanaError(f"cannot reach Grafana at {self._display}: {reason}") from exc
        if missing_ok and response.status_code == 404:
            return None
        if response.is_error:
            raise GrafanaError(
                f"Grafana at {self._display} refused to {what}: HTTP {response.status_code}"
                f" {_message(response)}".rstrip()
            )
        try:
            answer = response.json()
        except ValueError:
            raise GrafanaError(
                f"Grafana at {self._display} answered {what} with something not JSON"
            ) from None
        return answer if isinstance(answer, dict) else {}

    def ensure_folder(self, uid: str, title: str) -> None:
        if self._call("GET", f"/api/folders/{uid}", "read the folder", missing_ok=True) is None:
            self._call("POST", "/api/folders", "create the folder", {"uid": uid, "title": title})

    def upsert_datasource(self, model: Mapping[str, Any]) -> None:
        uid = model["uid"]
        path = f"/api/datasources/uid/{uid}"
        if self._call("GET", path, "read the data source", missing_ok=True) is None:
            self._call("POST", "/api/datasources", "create the data source", model)
        else:
            self._call("PUT", path, "update the data source", model)

    def save_dashboard(self, dashboard: Mapping[str, Any], folder_uid: str) -> str:
        answer = self._call(
            "POST",
            "/api/dashboards/db",
            f"save the dashboard {dashboard['uid']!r}",
            {
                "dashboard": {**dashboard, "id": None},
                "folderUid": folder_uid,
                "overwrite": True,
                "message": "ratewatch dashboards push",
            },
        )
        path = str((answer or {}).get("url", ""))
        return f"{self._http.base_url}".rstrip("/") + path if path.startswith("/") else path


def push(
    grafana_url: str,
    *,
    token: str | None = None,
    datasource_url: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> list[Pushed]:
    """Upload every dashboard into the RateWatch folder (created if missing), replacing
    earlier versions; with ``datasource_url``, create or update the data source first."""
    model = datasource_model(datasource_url) if datasource_url else None
    grafana = Grafana(grafana_url, token=token, transport=transport)
    try:
        if model is not None:
            grafana.upsert_datasource(model)
        grafana.ensure_folder(FOLDER_UID, FOLDER_TITLE)
        return [Pushed(d.title, grafana.save_dashboard(render(d), FOLDER_UID)) for d in DASHBOARDS]
    finally:
        grafana.close()


def _message(response: httpx.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200]
    if isinstance(answer, dict) and isinstance(answer.get("message"), str):
        return str(answer["message"])
    return ""
