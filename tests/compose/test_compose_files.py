"""The compose stack and its image, read as Docker reads them (there is no Docker engine
here): what is published and where, that no connection is password-less, that every
secret comes from the environment, that the ClickHouse image is told which accounts to
keep, and that the image holds every package, runs as a user of its own and checks its
health.  tests/compose/test_compose_services.py runs the services with this environment.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import click
import pytest
from setuptools import find_packages  # type: ignore[import-untyped]  # no stubs in dev

from ratewatch.cli import main
from tests.support.compose import (
    COMPOSE_DIR,
    DOCKERIGNORE,
    MissingVariable,
    copied_paths,
    dockerfile,
    environment,
    healthcheck,
    image_env,
    interpolate,
    services,
    users_d_files,
    variables,
)
from tests.support.paths import REPO

pytestmark = pytest.mark.timeout(120)

PUBLISH = "${RATEWATCH_PUBLISH_ADDRESS:-127.0.0.1}"
RATEWATCH_SERVICES = {"migrate", "limiter", "stream", "detect"}
# read from the environment by the CLI without an option of their own (DESIGN.md)
ENVIRONMENT_ONLY = {"RATEWATCH_KEY_SECRET", "RATEWATCH_BOOTSTRAP_KEY"}
# each required by the file; the optional bootstrap key is the one secret with a default
SECRETS = {
    "RATEWATCH_KEY_SECRET",
    "RATEWATCH_VALKEY_PASSWORD",
    "RATEWATCH_CLICKHOUSE_PASSWORD",
    "RATEWATCH_CLICKHOUSE_MIGRATE_PASSWORD",
    "RATEWATCH_ANALYST_PASSWORD",
    "RATEWATCH_GRAFANA_DB_PASSWORD",
    "RATEWATCH_GRAFANA_ADMIN_PASSWORD",
}


def every_reference() -> list[tuple[str, str, str]]:
    return variables((COMPOSE_DIR / "docker-compose.yml").read_text())


def test_only_the_limiter_and_grafana_are_published_and_on_the_configurable_address() -> None:
    published = {name: spec["ports"] for name, spec in services().items() if "ports" in spec}
    assert published == {
        "limiter": [f"{PUBLISH}:8080:8080"],
        "grafana": [f"{PUBLISH}:3000:3000"],
    }
    # unset, the address is the host's loopback; set, it is what the operator chose
    for ports in published.values():
        assert interpolate(ports[0], {}).startswith("127.0.0.1:")
        assert interpolate(ports[0], {"RATEWATCH_PUBLISH_ADDRESS": "10.0.0.5"}).startswith(
            "10.0.0.5:"
        )
    # no service widens that by host networking or by exposing more
    for name, spec in services().items():
        assert spec.get("network_mode") is None, name
        assert "expose" not in spec, name


def test_the_consumer_and_the_detector_serve_metrics_on_the_compose_network_only() -> None:
    ports = set()
    for name in ("stream", "detect"):
        service = services()[name]
        assert "ports" not in service, name
        # options as variables, not arguments
        port = service["environment"]["RATEWATCH_METRICS_PORT"]
        assert service["command"] == [name]
        ports.add(port)
    assert ports == {"9101", "9102"}
    # inside a container 127.0.0.1 is the container's own: a Prometheus on the compose
    # network reaches the ports only if they listen on every interface
    assert image_env()["RATEWATCH_METRICS_HOST"] == "0.0.0.0"


def test_every_connection_url_has_a_password_from_the_environment() -> None:
    urls = []
    for name in RATEWATCH_SERVICES:
        for variable, value in services()[name]["environment"].items():
            if "://" in str(value):
                urls.append((name, variable, str(value)))
    assert {(name, variable) for name, variable, _ in urls} == {
        ("migrate", "RATEWATCH_CLICKHOUSE_URL"),
        ("limiter", "RATEWATCH_REDIS_URL"),
        ("limiter", "RATEWATCH_CLICKHOUSE_URL"),
        ("stream", "RATEWATCH_REDIS_URL"),
        ("stream", "RATEWATCH_CLICKHOUSE_URL"),
        ("detect", "RATEWATCH_REDIS_URL"),
    }
    for name, variable, value in urls:
        parts = urlsplit(interpolate(value, {secret: "s3cr3t" for secret in SECRETS}))
        assert parts.password == "s3cr3t", (name, variable)
        # the password is a required variable: compose refuses to start without it
        [(secret, op, _)] = variables(value)
        assert secret in SECRETS, (name, variable, value)
        assert op == ":?", (name, variable, value)
        with pytest.raises(MissingVariable):
            interpolate(value, {})
        if parts.scheme == "http":
            # never the image's `default`, which has every grant
            assert parts.username in {"ratewatch", "ratewatch_migrate"}, (name, value)
    # the schema account is the schema job's alone
    migrate_users = {
        urlsplit(interpolate(value, {s: "x" for s in SECRETS})).username
        for name, _, value in urls
        if name != "migrate" and value.startswith("http")
    }
    assert migrate_users == {"ratewatch"}
    assert "RATEWATCH_CLICKHOUSE_URL" not in services()["detect"]["environment"]


def test_every_secret_comes_from_the_environment_and_the_required_ones_stop_compose() -> None:
    references = every_reference()
    for name, op, message in references:
        if name in SECRETS:
            assert op == ":?", name
            assert message, name
    assert {name for name, _, _ in references} >= SECRETS
    # the bootstrap key is optional: without it the limiter makes one and prints it once
    assert ("RATEWATCH_BOOTSTRAP_KEY", ":-", "") in references
    # so is the metrics token: without it /metrics and /health/detailed are open
    assert ("RATEWATCH_METRICS_TOKEN", ":-", "") in references
    # no literal value where a secret goes
    for service_name, spec in services().items():
        for variable, value in (spec.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|_KEY$|_AUTH$", variable):
                assert variables(str(value)), (service_name, variable, value)
    # the whole file fails to interpolate with any required secret missing
    full = dict.fromkeys(SECRETS, "x")
    for secret in SECRETS:
        partial = {name: value for name, value in full.items() if name != secret}
        with pytest.raises(MissingVariable, match=secret):
            interpolate((COMPOSE_DIR / "docker-compose.yml").read_text(), partial)


def test_valkey_requires_the_password_from_the_environment() -> None:
    valkey = services()["valkey"]
    command = valkey["command"]
    assert command[0] == "valkey-server"  # the entrypoint drops to the user valkey for it
    password = command[command.index("--requirepass") + 1]
    assert variables(password) == [("RATEWATCH_VALKEY_PASSWORD", ":?", "set a password for Valkey")]
    # the health check authenticates without the password in its arguments, and needs PONG
    test = valkey["healthcheck"]["test"]
    assert "PONG" in test[-1]
    assert "-a" not in test[-1].split()
    for variable in ("VALKEYCLI_AUTH", "REDISCLI_AUTH"):
        assert variables(valkey["environment"][variable])[0][0] == "RATEWATCH_VALKEY_PASSWORD"


def test_the_clickhouse_image_keeps_only_the_accounts_of_the_users_d_files() -> None:
    clickhouse = services()["clickhouse"]
    env = clickhouse["environment"]
    # the entrypoint neither creates a full-power account nor rewrites `default`
    assert env["CLICKHOUSE_SKIP_USER_SETUP"] == "1"
    assert env["CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT"] == "0"
    for variable in ("CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD", "CLICKHOUSE_DB"):
        assert variable not in env

    mounts = {}
    for volume in clickhouse["volumes"]:
        source, target, *options = volume.split(":")
        if source.startswith("."):
            assert options == ["ro"], volume
            mounts[(COMPOSE_DIR / source).resolve()] = target
    # every file of compose/clickhouse is mounted, under its own name
    files = sorted((COMPOSE_DIR / "clickhouse").glob("*/*.xml"))
    assert sorted(mounts) == files
    for file, target in mounts.items():
        assert target == f"/etc/clickhouse-server/{file.parent.name}/{file.name}"

    users = {}
    for file in users_d_files():
        for user in ET.parse(file).getroot().findall("users/*"):
            users[user.tag] = user
    assert set(users) == {"default", "ratewatch", "ratewatch_migrate", "analyst", "grafana"}
    # `default` (every grant, no password) only on the container's loopback
    networks = users["default"].find("networks")
    assert networks is not None
    assert networks.get("replace") == "replace"
    assert [ip.text for ip in networks] == ["::1", "127.0.0.1"]
    assert users["default"].find("password") is None  # the image's: left as it is
    for name, user in users.items():
        if name == "default":
            continue
        passwords = [e for e in user if e.tag.startswith("password") or e.tag == "no_password"]
        assert [e.tag for e in passwords] == ["password"], name
        source = passwords[0].get("from_env")
        assert source in SECRETS, name
        # required where the server reads it
        assert variables(env[source])[0][:2] == (source, ":?"), name
        assert user.find("access_management") is None, name


def test_the_ratewatch_services_take_their_settings_from_the_environment() -> None:
    for name in RATEWATCH_SERVICES:
        command = services()[name]["command"]
        # the subcommand alone: a URL (and its password) never reaches a process list
        assert command == [name if name != "limiter" else "serve"], (name, command)
        for variable in services()[name]["environment"]:
            assert variable.startswith("RATEWATCH_"), (name, variable)


def option_variables(command: str) -> set[str]:
    """The RATEWATCH_* variables ``ratewatch <command>`` reads as options it documents."""
    with click.Context(main) as context:
        cli = main.get_command(context, command)
    assert cli is not None
    names = set()
    for parameter in cli.params:
        if getattr(parameter, "hidden", False):
            continue
        envvar = getattr(parameter, "envvar", None)
        names |= {envvar} if isinstance(envvar, str) else set(envvar or ())
    return names


def test_every_variable_the_compose_file_sets_is_an_option_of_the_command() -> None:
    for name in RATEWATCH_SERVICES:
        command = services()[name]["command"][0]
        known = option_variables(command)
        # as `--help` lists them: the interface an operator reads
        result = subprocess.run(
            [sys.executable, "-m", "ratewatch", command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
        listed = set(re.findall(r"RATEWATCH_[A-Z0-9_]+", result.stdout))
        assert known - listed == set(), (command, known - listed)
        for variable in services()[name]["environment"]:
            assert variable in known | ENVIRONMENT_ONLY, (name, variable)
        if command == "serve":
            assert variable_set(name) >= {"RATEWATCH_KEY_SECRET", "RATEWATCH_BOOTSTRAP_KEY"}
    # the image's variables, too, are options of the commands it runs
    every = set().union(*(option_variables(c) for c in ("serve", "stream", "detect", "migrate")))
    assert (
        set(image_env())
        - {"PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR"}
        - {"PIP_DISABLE_PIP_VERSION_CHECK"}
        <= every
    )


def variable_set(service: str) -> set[str]:
    return set(services()[service]["environment"])


def test_the_services_start_in_order_on_healthy_dependencies() -> None:
    spec = services()
    for name, service in spec.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            condition = condition["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in spec[dependency], (name, dependency)
            elif condition == "service_completed_successfully":
                assert spec[dependency]["restart"] == "no", (name, dependency)
    # the schema exists before anything writes to ClickHouse
    for name in ("limiter", "stream"):
        assert spec[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }
    assert spec["migrate"]["depends_on"] == {"clickhouse": {"condition": "service_healthy"}}
    # with environment interpolated, the file is still the services above
    env = dict.fromkeys(SECRETS, "x")
    for service in spec.values():
        if "environment" in service:
            environment(service, env)


def test_the_image_copies_every_package_pyproject_ships() -> None:
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    top_level = {name.split(".")[0] for name in find_packages(where=str(REPO), include=include)}
    assert top_level >= {"ratewatch", "limiter", "control", "webhooks"}
    copied = copied_paths()
    assert top_level <= set(copied), top_level - set(copied)
    # and the package data they need at run time comes with them (inside the directories)
    for pattern in pyproject["tool"]["setuptools"]["package-data"]:
        assert pattern in copied
    # nothing copied is left out of the build context
    ignored = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in copied:
        for pattern in ignored:
            assert not fnmatch.fnmatch(path, pattern), (path, pattern)
        assert (REPO / path).exists(), path


def test_the_image_runs_as_a_user_of_its_own() -> None:
    users = [arguments for keyword, arguments in dockerfile() if keyword == "USER"]
    assert users, "no USER: the service would run as root"
    user, _, group = users[-1].partition(":")
    # numeric, so that a runtime can check it is not root without reading /etc/passwd
    assert user.isdigit()
    assert int(user) != 0
    assert group.isdigit()
    assert int(group) != 0
    instructions = dockerfile()
    # the user is made before, and nothing runs as root after it
    made = next(i for i, (k, a) in enumerate(instructions) if k == "RUN" and f"--uid {user}" in a)
    switched = max(i for i, (k, _) in enumerate(instructions) if k == "USER")
    assert made < switched
    assert all(k != "RUN" for k, _ in instructions[switched:])
    # the data volume belongs to it
    setup = instructions[made][1]
    assert "chown ratewatch:ratewatch /data" in setup
    assert ("VOLUME", "/data") in instructions


def test_the_image_listens_on_every_interface_and_checks_its_health_without_curl() -> None:
    env = image_env()
    assert env["RATEWATCH_HOST"] == "0.0.0.0"
    assert env["RATEWATCH_DATA_DIR"] == "/data"
    command = healthcheck()
    assert command[:2] == ["python", "-c"]
    assert "urllib" in command[2]
    assert "curl" not in command[2]
    assert ("ENTRYPOINT", '["ratewatch"]') in dockerfile()


def test_the_image_serves_grpc_and_tracing_with_opentelemetrys_own_proto_modules() -> None:
    import os
    import tomllib
    from importlib.metadata import version
    from pathlib import Path

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    installs = [args for keyword, args in dockerfile() if keyword == "RUN" and "pip " in args]
    assert len(installs) == 1, installs
    first, *rest = [command.strip() for command in installs[0].split("&&")]
    # the service, Envoy's rate limit service (--grpc-port) and tracing (--tracing)
    assert first == "pip install '.[server,grpc,otel]'"
    assert {"server", "grpc", "otel"} <= set(extras["optional-dependencies"])
    # then, last, opentelemetry-proto again over xds-protos' stale copy of its modules
    # (grpc/grpc#42926), without its dependencies, at the version the first install chose
    [again] = rest
    assert again.startswith("pip install --force-reinstall --no-deps ")
    shown = subprocess.run(
        ["sh", "-c", 'pip() { echo "$@"; }; ' + again],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split()[-1] == f"opentelemetry-proto=={version('opentelemetry-proto')}"


def test_grpc_and_tracing_are_off_unless_the_operator_sets_their_variables() -> None:
    limiter = services()["limiter"]["environment"]
    for variable in ("RATEWATCH_GRPC_PORT", "RATEWATCH_TRACING"):
        assert variables(str(limiter[variable])) == [(variable, ":-", "")]
        assert interpolate(str(limiter[variable]), {}) == ""  # unset: the option is not given
        assert variable in option_variables("serve")
    # and the gRPC port is not published: an Envoy on the compose network reaches it
    assert services()["limiter"]["ports"] == [f"{PUBLISH}:8080:8080"]
