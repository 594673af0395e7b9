"""HTTPS for ``serve`` and ``up``: the server's TLS context, built from ``--tls-cert`` and
``--tls-key`` (PEM files) and checked before anything starts.

TLS 1.2 at least; TLS 1.3 whenever the client speaks it (OpenSSL negotiates the highest
version both sides have).  Without the options the limiter speaks plain HTTP, for a reverse
proxy (nginx, Caddy, Traefik) that terminates TLS in front of it (``docs/security.md``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from limiter.errors import ConfigError

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path
    key: Path


def tls_files(cert: Path | None, key: Path | None) -> TlsFiles | None:
    """Both files or neither (plain HTTP); the context is built once to check them."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = (
            ("--tls-cert", "--tls-key") if cert is not None else ("--tls-key", "--tls-cert")
        )
        raise ConfigError(f"{given} needs {missing} too (HTTPS takes both, or neither)")
    files = TlsFiles(cert, key)
    server_context(files)
    return files


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The server's context; ConfigError naming the option and file that cannot be used."""
    cert_text = _read(files.cert, "--tls-cert")
    key_text = _read(files.key, "--tls-key")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise ConfigError(f"--tls-cert {str(files.cert)!r} holds no PEM certificate")
    if "PRIVATE KEY-----" not in key_text:
        raise ConfigError(f"--tls-key {str(files.key)!r} holds no PEM private key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        raise ConfigError(
            f"--tls-cert {str(files.cert)!r} and --tls-key {str(files.key)!r} are not a "
            f"certificate and its private key ({exc.reason or exc})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS files: {exc.strerror or exc}") from None
    return context


def _read(path: Path, option: str) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ConfigError(f"{option} {str(path)!r}: cannot read it ({exc.strerror})") from None
