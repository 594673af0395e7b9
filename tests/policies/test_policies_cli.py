"""``ratewatch policies apply/export`` against the session's Redis while its limiter runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.credentials import KEY_SECRET
from tests.support.polling import wait_until
from tests.support.servers import RatewatchProcess, RedisServer

pytestmark = pytest.mark.timeout(120)

POLICIES = """\
policies:
  free:
    limits:
      - {limit: 2, window: 60}
      - {limit: 100, window: 3600}
    overrides:
      "acct:enterprise-*":
        limits: [{limit: 50, window: 60}]
        mode: shadow
  paid:
    limits: [{limit: 20, window: 1}]
    algorithm: token_bucket
"""


def cli(
    limiter: RatewatchProcess, redis_server: RedisServer, *args: str
) -> subprocess.CompletedProcess[str]:
    assert limiter.data_dir is not None
    return subprocess.run(
        [sys.executable, "-m", "ratewatch", "policies", *args, "--redis-url", redis_server.url,
         "--data-dir", str(limiter.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "RATEWATCH_KEY_SECRET": KEY_SECRET.hex()},
    )  # fmt: skip


def test_apply_is_idempotent_prints_the_diff_and_export_reads_back(
    limiter: RatewatchProcess,
    redis_server: RedisServer,
    api: httpx.Client,
    tenant: str,
    tmp_path: Path,
) -> None:
    file = tmp_path / "policies.yaml"
    file.write_text(POLICIES)
    dry = cli(limiter, redis_server, "apply", str(file), "--tenant", tenant, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "+ policy free  2/60s, 100/3600s",
        "+ override free / acct:enterprise-*  50/60s shadow",
        "+ policy paid  20/1s token_bucket",
        f"3 changes; would change tenant {tenant}'s policies.",
    ]
    assert api.get("/v1/policies").json()["policies"] == []
    applied = cli(limiter, redis_server, "apply", str(file), "--tenant", tenant)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines()[:3] == dry.stdout.splitlines()[:3]

    def limit_of(key: str) -> int | None:
        answer = api.post("/v1/check", json={"key": key, "policy": "free"})
        return answer.json()["limit"] if answer.status_code == 200 else None

    wait_until(lambda: limit_of("acct:enterprise-1") == 50, 5, "the applied override in force")
    assert limit_of("acct:free-1") == 2
    again = cli(limiter, redis_server, "apply", str(file), "--tenant", tenant)
    assert again.stdout.strip() == "No changes."
    exported = cli(limiter, redis_server, "export", "--tenant", tenant)
    assert exported.returncode == 0, exported.stderr
    (tmp_path / "exported.yaml").write_text(exported.stdout)
    back = cli(limiter, redis_server, "apply", str(tmp_path / "exported.yaml"), "--tenant", tenant)
    assert back.stdout.strip() == "No changes."
    smaller = (
        POLICIES.split("    overrides:")[0] + "  paid:\n    limits: [{limit: 30, window: 1}]\n"
    )
    file.write_text(smaller)
    changed = cli(limiter, redis_server, "apply", str(file), "--tenant", tenant)
    assert changed.stdout.splitlines()[:2] == [
        "- override free / acct:enterprise-*",
        "~ policy paid  30/1s",
    ]
    wait_until(lambda: limit_of("acct:enterprise-1") == 2, 5, "the override gone")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (POLICIES.replace("{limit: 2, window: 60}", "{limit: 0, window: 60}"),
         ":4: `$.policies.free.limits[0].limit` = 0 is out of range"),
        (POLICIES.replace("mode: shadow", "mode: loud"),
         ":9: `$.policies.free.overrides.acct:enterprise-*.mode` 'loud'"),
        (POLICIES.replace("algorithm: token_bucket", "algorithm: leaky"),
         ":12: `$.policies.paid.algorithm` 'leaky'"),
        (POLICIES.replace("  paid:", "  bad name:"), ":10: `$.policies.bad name`"),
        (POLICIES.replace("limits: [{limit: 20", "limits: [{limit: 20,,"), ":11: not valid YAML"),
        ("rules: {}\n", ":1: `$` must be a mapping with one key, `policies`"),
    ],
)  # fmt: skip
def test_an_invalid_file_is_refused_naming_its_line_and_field(
    limiter: RatewatchProcess, redis_server: RedisServer, tenant: str, tmp_path: Path, text: str,
    where: str,
) -> None:  # fmt: skip
    file = tmp_path / "policies.yaml"
    file.write_text(text)
    refused = cli(limiter, redis_server, "apply", str(file), "--tenant", tenant)
    assert refused.returncode == 1
    assert refused.stdout == ""
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"Error: {file}{where}"), line
