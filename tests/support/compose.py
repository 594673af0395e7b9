"""The compose stack's files as Docker reads them, for the tests that check the stack
without a Docker engine: compose/docker-compose.yml with compose's variable interpolation,
and the Dockerfile's instructions."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # the dev extra installs no stubs for it

from tests.support.paths import REPO

COMPOSE_DIR = REPO / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
USERS_D = COMPOSE_DIR / "clickhouse" / "users.d"

# $$, ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariable(Exception):
    """``${NAME:?message}`` with NAME unset (or empty): compose refuses to start."""


def services() -> dict[str, Any]:
    result: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return result


def variables(text: str) -> list[tuple[str, str, str]]:
    """Every variable reference in ``text``: (name, operator, argument); ``$$`` is none."""
    found = []
    for match in _VARIABLE.finditer(text):
        if match.group("escaped"):
            continue
        if match.group("bare"):
            found.append((match.group("bare"), "", ""))
        else:
            found.append((match.group("braced"), match.group("op") or "", match.group("arg") or ""))
    return found


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` as compose interpolates it with ``env``."""

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("bare") or match.group("braced")
        op, arg = match.group("op") or "", match.group("arg") or ""
        value = env.get(name)
        unset = value is None or (op.startswith(":") and value == "")
        if op.endswith("?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        if op.endswith("-") and unset:
            return arg
        return value or ""

    return _VARIABLE.sub(replace, text)


def environment(service: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """A service's ``environment`` (a mapping in this file), interpolated."""
    return {name: interpolate(str(value), env) for name, value in service["environment"].items()}


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions, (INSTRUCTION, arguments), continuations joined."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, arguments = current.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return instructions


def image_env() -> dict[str, str]:
    """The ``ENV`` of the image (``ENV A=1 B=2`` form)."""
    env = {}
    for keyword, arguments in dockerfile():
        if keyword == "ENV":
            for pair in arguments.split():
                name, equals, value = pair.partition("=")
                assert equals, f"ENV {arguments!r}: use the NAME=value form"
                env[name] = value.strip("\"'")
    return env


def healthcheck() -> list[str]:
    """The image's HEALTHCHECK command, in exec (JSON) form."""
    checks = [arguments for keyword, arguments in dockerfile() if keyword == "HEALTHCHECK"]
    assert len(checks) == 1, checks
    _, found, command = checks[0].partition("CMD ")
    assert found, checks[0]
    parsed = json.loads(command)
    assert isinstance(parsed, list)
    assert all(isinstance(arg, str) for arg in parsed)
    return parsed


def copied_paths() -> list[str]:
    """What the Dockerfile's COPY instructions take from the build context."""
    paths = []
    for keyword, arguments in dockerfile():
        if keyword == "COPY":
            *sources, _ = [arg for arg in arguments.split() if not arg.startswith("--")]
            paths += sources
    return paths


def users_d_files() -> list[Path]:
    return sorted(USERS_D.glob("*.xml"))
