"""`ratewatch up` and the key commands, as a user runs them."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from analytics.query_client import answers, query
from tests.support.polling import wait_until
from tests.support.processes import (
    child_pid,
    command_line,
    environment_of,
    nice_values,
    thread_names,
)
from tests.support.servers import RatewatchProcess, free_port

pytestmark = pytest.mark.timeout(180)


def cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ratewatch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )


def up(data_dir: Path, log: Path, env: dict[str, str] | None = None) -> RatewatchProcess:
    port = free_port()
    return RatewatchProcess(
        ["up", "--port", str(port), "--data-dir", str(data_dir)], port, env=env, log_path=log
    ).start()


def check(base_url: str, api_key: str, key: str = "user:1") -> httpx.Response:
    return httpx.post(
        base_url + "/v1/check",
        json={"key": key, "limit": 10, "window": 3600},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    )


def valkey_running(data_dir: Path) -> bool:
    found = subprocess.run(["pgrep", "-f", f"valkey-server.*{data_dir}"], capture_output=True)
    return found.returncode == 0


def test_up_from_a_clean_data_dir_then_restart_keeps_keys_and_counters(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    log = tmp_path / "up.log"
    service = up(data_dir, log)
    try:
        found = re.search(r"^\s+(rwk_\S+)$", log.read_text(), re.MULTILINE)
        assert found, log.read_text()
        admin_key = found.group(1)
        assert httpx.get(service.base_url + "/health", timeout=5).status_code == 200
        assert check(service.base_url, admin_key).json()["remaining"] == 9
        assert check(service.base_url, admin_key).json()["remaining"] == 8

        # the key commands work while `up` runs on the same data dir
        created = cli(
            "keys", "create", "--tenant", "acme", "--name", "web", "--data-dir", str(data_dir)
        )
        assert created.returncode == 0, created.stderr
        acme_key = created.stdout.split()[-1]
        assert check(service.base_url, acme_key).json()["remaining"] == 9
        listed = cli("keys", "list", "--data-dir", str(data_dir))
        assert "acme" in listed.stdout
        assert "default" in listed.stdout
        assert acme_key not in listed.stdout
        acme_id = next(line.split()[0] for line in listed.stdout.splitlines() if " acme " in line)
        revoked = cli("keys", "revoke", acme_id, "--data-dir", str(data_dir))
        assert revoked.returncode == 0, revoked.stderr
        wait_until(
            lambda: check(service.base_url, acme_key).status_code == 401,
            2,
            "the revoked key to be refused",
        )
    finally:
        assert service.stop(signal.SIGTERM) == 0
    assert not valkey_running(data_dir), "the embedded Valkey outlived `ratewatch up`"

    service = up(data_dir, log)
    try:
        assert "rwk_" not in log.read_text().split("listening on")[-1], "a second key was made"
        body = check(service.base_url, admin_key).json()
        assert body["remaining"] == 7, "the counter did not survive the restart"
        assert check(service.base_url, acme_key).status_code == 401
    finally:
        assert service.stop(signal.SIGINT) == 0
    assert not valkey_running(data_dir)


def test_bootstrap_key_from_the_environment_is_registered_idempotently(tmp_path: Path) -> None:
    bootstrap = "my-own-bootstrap-key-0123456789abcdef"
    env = {"RATEWATCH_BOOTSTRAP_KEY": bootstrap}
    for _ in range(2):
        service = up(tmp_path / "data", tmp_path / "up.log", env)
        try:
            assert check(service.base_url, bootstrap).status_code == 200
            keys = httpx.get(
                service.base_url + "/v1/keys",
                timeout=5,
                headers={"Authorization": f"Bearer {bootstrap}"},
            ).json()["keys"]
            assert [(k["tenant"], k["admin"]) for k in keys] == [("default", True)]
        finally:
            service.stop()
    assert "rwk_" not in (tmp_path / "up.log").read_text()


def test_keys_create_before_up_starts_and_stops_its_own_valkey(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    created = cli("keys", "create", "--tenant", "early", "--admin", "--data-dir", str(data_dir))
    assert created.returncode == 0, created.stderr
    assert not valkey_running(data_dir)
    service = up(data_dir, tmp_path / "up.log")
    try:
        assert check(service.base_url, created.stdout.split()[-1]).status_code == 200
    finally:
        service.stop()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["keys", "create", "--tenant", "Bad Tenant!"], 1, "tenant 'Bad Tenant!' is not valid"),
        (["keys", "revoke", "key_nope"], 1, "no key with id 'key_nope'"),
        (["up", "--port", "99999"], 2, "99999"),
        (["up", "--metrics-port", "0"], 2, "'--metrics-port'"),
        (["up", "--kafka", "localhost:9", "--metrics-port", "65535"], 2, "65535 leaves no port"),
        (["serve", "--redis-url", "http://nope"], 1, "redis url 'http://nope' is not valid"),
        (["keys", "list", "--redis-url", "mysql://x"], 1, "redis url"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    result = (
        cli(*args, "--data-dir", str(tmp_path / "d"))
        if args[0] in ("keys", "serve")
        else cli(*args)
    )
    assert result.returncode == code, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_up_refuses_a_taken_metrics_port_in_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = cli("up", "--data-dir", str(tmp_path / "d"), "--metrics-port", str(port))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.strip().splitlines() == [
        f"Error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ]


def test_up_lowers_the_pipeline_workers_priority_by_the_configured_nice(tmp_path: Path) -> None:
    """The checks first: the worker at a lower priority, and told to hold its inserts while
    the limiter is as busy as configured (stream/deferral.py)."""
    data_dir = tmp_path / "data"
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    env = {
        "RATEWATCH_PIPELINE_NICE": "3",
        "RATEWATCH_PIPELINE_HOLD_ABOVE": "0.25",
        "RATEWATCH_PIPELINE_HOLD_MAX": "3",
    }
    service = up(data_dir, tmp_path / "up.log", env=env)
    try:
        wait_until(lambda: (data_dir / "run" / "pipeline.pid").exists(), 30, "the worker's pid")
        # but chDB's memory watcher, which raises its own priority when it may (as root)
        worker = nice_values(child_pid(data_dir, "pipeline"), but=("MemoryWorker",))
        assert worker == {min(19, ours + 3)}
        assert nice_values(child_pid(data_dir, "limiter")) == {ours}
        args = command_line(child_pid(data_dir, "pipeline"))
        hold = args.index("--hold-for")
        assert args[hold : hold + 6] == [
            *("--hold-for", str((data_dir / "run" / "limiter.pid").resolve())),
            *("--hold-above", "0.25", "--hold-max", "3.0"),
        ]
    finally:
        service.stop()


def decisions_in_analytics(data_dir: Path) -> int | None:
    """``count()`` of the decisions table, asked on the pipeline worker's query socket
    (None until the worker answers there)."""
    path = data_dir / "clickhouse" / "query.sock"
    if not answers(path):
        return None
    return int(query(path, "SELECT count() AS n FROM ratewatch.decisions")[0]["n"])


def test_up_runs_a_lean_pipeline_worker_unless_told_otherwise(tmp_path: Path) -> None:
    """The worker runs as `python -OO` (it holds less) with polars on one thread, and does
    its work so; a PYTHONOPTIMIZE or POLARS_MAX_THREADS of the user's own reaches it
    unchanged, and the limiter keeps what the user gave."""
    bootstrap = "rwk_" + "0123456789abcdef" * 2
    lean = ("PYTHONOPTIMIZE", "POLARS_MAX_THREADS")
    for given, expected in ((None, ("2", "1")), (("0", "2"), ("0", "2"))):
        data_dir = tmp_path / f"data-{given is not None}"
        port = free_port()
        service = RatewatchProcess(
            ["up", "--port", str(port), "--data-dir", str(data_dir)],
            port,
            log_path=tmp_path / f"up-{given is not None}.log",
        )
        # exactly this environment: the test run's own settings, if any, left out
        service.env = {k: v for k, v in os.environ.items() if k not in lean}
        service.env["RATEWATCH_BOOTSTRAP_KEY"] = bootstrap
        if given is not None:
            service.env.update(zip(lean, given, strict=True))
            service.env["RATEWATCH_PIPELINE_HOLD_ABOVE"] = "0"  # and a worker that never holds
        service.start()
        try:
            worker = environment_of(child_pid(data_dir, "pipeline"))
            assert tuple(worker.get(name) for name in lean) == expected
            held = "--hold-for" in command_line(child_pid(data_dir, "pipeline"))
            assert held is (given is None)
            limiter = environment_of(child_pid(data_dir, "limiter"))
            assert tuple(limiter.get(name) for name in lean) == (given or (None, None))
            assert check(service.base_url, bootstrap).status_code == 200

            wait_until(
                lambda d=data_dir: decisions_in_analytics(d) == 1,  # type: ignore[misc]
                60,
                "the decision in analytics",
                interval=0.5,
            )
            # the insert shaped its batch with polars: its pool runs as many threads as told
            assert polars_threads(child_pid(data_dir, "pipeline")) == int(expected[1])
        finally:
            service.stop()


def polars_threads(pid: int) -> int:
    """How many of the process's threads are polars' pool (``polars-0``, ``polars-1``, …;
    not its other threads, such as ``polars-ooc-clea``)."""
    return sum(name.removeprefix("polars-").isdigit() for name in thread_names(pid))


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--pipeline-nice", "20"),
        ("--pipeline-nice", "-1"),
        ("--pipeline-nice", "ten"),
        ("--backlog-max-mb", "0"),
        ("--backlog-max-age", "0.5"),
        ("--backlog-max-age", "nan"),
        ("--pipeline-hold-above", "-0.1"),
        ("--pipeline-hold-above", "65"),
        ("--pipeline-hold-above", "nan"),
        ("--pipeline-hold-max", "0"),
        ("--pipeline-hold-max", "nan"),
    ],
)
def test_up_refuses_a_resource_option_out_of_range(tmp_path: Path, option: str, value: str) -> None:
    result = cli("up", "--data-dir", str(tmp_path / "d"), option, value)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"'{option}'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()  # refused before anything started


def test_up_refuses_a_pipeline_hold_as_long_as_the_backlog_bound(tmp_path: Path) -> None:
    """A hold that long would make /health/detailed report the held stream as behind."""
    data_dir = tmp_path / "d"
    args = ("--pipeline-hold-max", "300", "--backlog-max-age", "300")
    result = cli("up", "--data-dir", str(data_dir), *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [
        "Error: Invalid value for '--pipeline-hold-max': 300 s is not below --backlog-max-age "
        "(300 s): a held stream would be reported as behind"
    ]
    assert not data_dir.exists()  # refused before anything started
