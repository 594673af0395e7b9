"""The consumers' batch bounds on the command line: ``up``, ``stream`` and ``pipeline`` take
them as options or from the environment, and refuse a bad one naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

COMMANDS = {
    "up": ["up"],
    "stream": ["stream", "--kafka", "127.0.0.1:1"],
    "pipeline": ["pipeline", "--redis-url", "redis://127.0.0.1:1"],
}
BAD = [
    ("--batch-max-decisions", "0"),
    ("--batch-max-decisions", "many"),
    ("--batch-max-age", "61"),
    ("--batch-max-age", "-1"),
    ("--batch-max-age", "nan"),
    ("--batch-min-decisions", "0"),
    ("--batch-min-age", "nan"),
]


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(("option", "value"), BAD)
@pytest.mark.parametrize("from_env", [False, True])
def test_a_bad_batch_bound_is_a_usage_error_naming_it(
    command: str, option: str, value: str, from_env: bool, tmp_path: Path
) -> None:
    args = [*COMMANDS[command], "--data-dir", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATEWATCH_BATCH_")}
    if from_env:
        env["RATEWATCH_" + option.lstrip("-").replace("-", "_").upper()] = value
    else:
        args += [option, value]
    result = subprocess.run(
        [sys.executable, "-m", "ratewatch", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert option in errors[0]
    assert value in errors[0]
    assert not (tmp_path / "run").exists()  # refused before anything started
