"""A real nginx (Debian's package) the tests start themselves, configured with the nginx
block of ``docs/gateways.md`` as it is written, and the small application behind it."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from tests.support.paths import REPO
from tests.support.polling import wait_until
from tests.support.servers import free_port, terminate

GATEWAYS_DOC = REPO / "docs" / "gateways.md"
# what the documented configuration names, replaced by the test's own addresses and key
DOC_RATEWATCH = "server 127.0.0.1:8080;"
DOC_APP = "server 127.0.0.1:3000;"
DOC_LISTEN = "listen 80;"
DOC_KEY = "rwk_your_gate_key"


def documented_config() -> str:
    """The first ```nginx block of docs/gateways.md."""
    found = re.search(r"```nginx\n(.*?)```", GATEWAYS_DOC.read_text(), re.DOTALL)
    assert found is not None, f"no nginx configuration in {GATEWAYS_DOC}"
    return found.group(1)


def render(config: str, ratewatch_port: int, app_port: int, port: int, key: str) -> str:
    for old, new in (
        (DOC_RATEWATCH, f"server 127.0.0.1:{ratewatch_port};"),
        (DOC_APP, f"server 127.0.0.1:{app_port};"),
        (DOC_LISTEN, f"listen 127.0.0.1:{port};"),
        (DOC_KEY, key),
    ):
        assert config.count(old) == 1, f"the documented nginx configuration lost {old!r}"
        config = config.replace(old, new)
    return config


class Nginx:
    """``nginx -g 'daemon off;'`` in one process (no master), everything under ``workdir``."""

    def __init__(self, workdir: Path, http_block: Callable[[int], str]):
        """``http_block(port)``: what goes in the ``http`` block, listening on ``port``."""
        self.workdir = workdir
        self.port = free_port()
        self.http_block = http_block(self.port)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.workdir.mkdir(parents=True, exist_ok=True)
        temp = {name: self.workdir / name for name in
                ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}  # fmt: skip
        conf = self.workdir / "nginx.conf"
        conf.write_text(
            f"""worker_processes 1;
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
{self.http_block}
}}
"""
        )
        self.process = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(self.workdir),
             "-e", str(self.workdir / "error.log"), "-g", "daemon off; master_process off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.log()}")
            try:
                httpx.get(self.base_url + "/nginx-probe", timeout=1)
                return True
            except httpx.TransportError:
                return False

        wait_until(up, 15, f"nginx on port {self.port}", 0.05)
        return self

    def log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)
            self.process = None


class App:
    """The application behind the proxy: 200 and a greeting for every request, each
    request's path and headers kept."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                body = b"hello from the app\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> App:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
