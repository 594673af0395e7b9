"""The compose stack's RateWatch services run commands the CLI really has."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "compose" / "docker-compose.yml"


def test_every_ratewatch_service_command_is_a_valid_invocation() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    commands = {name: spec["command"] for name, spec in services.items() if "build" in spec}
    assert set(commands) == {"migrate", "limiter", "stream"}
    for name, command in commands.items():
        result = subprocess.run(
            [sys.executable, "-m", "ratewatch", *command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (name, result.stderr)
    environment = services["limiter"]["environment"]
    for variable in ("RATEWATCH_REDIS_URL", "RATEWATCH_KAFKA", "RATEWATCH_CLICKHOUSE_URL"):
        assert variable in environment
