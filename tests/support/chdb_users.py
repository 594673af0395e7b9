"""chDB as an account of the compose stack's ClickHouse users XML, for the tests that check
accounts (``analyst``, ``grafana``) on the real engine.

chDB hosts one engine per process and always logs in as ``default``.  So a probe runs in a
subprocess of its own (``run_probe``): first as a ``default`` who may do everything, with
the files under test beside it (``connect_as_admin``: the grants and row policies are the
engine's reading of them), then on the same data as a ``default`` made of the account's
own elements (``connect_as``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from tests.support.paths import REPO

FULL_DEFAULT = """<clickhouse>
    <users><default>
        <password></password><access_management>1</access_management>
        <networks><ip>::/0</ip></networks><profile>default</profile><quota>default</quota>
    </default></users>
    <profiles><default/></profiles>
    <quotas><default/></quotas>
</clickhouse>"""
CONFIG = """<clickhouse><user_directories><users_xml><path>{users}</path></users_xml>
</user_directories></clickhouse>"""


def _client(data: Path, config: Path) -> Client:
    import clickhouse_connect

    return clickhouse_connect.get_client(
        interface="chdb", path=str(data), chdb_options={"config-file": str(config)}
    )


def connect_as_admin(work: Path, data: Path, users_d: Mapping[str, str]) -> Client:
    """A client on ``data`` as a ``default`` who may do everything, with ``users_d`` (file
    name -> XML) loaded beside it."""
    admin = work / "admin"
    (admin / "users.d").mkdir(parents=True)
    (admin / "users.xml").write_text(FULL_DEFAULT)
    for name, text in users_d.items():
        (admin / "users.d" / name).write_text(text)
    (admin / "config.xml").write_text(CONFIG.format(users=admin / "users.xml"))
    return _client(data, admin / "config.xml")


def as_default(user: ET.Element) -> ET.Element:
    """``user`` renamed ``default`` with an empty password, as chDB logs in."""
    user.tag = "default"
    for password in user.findall("password"):
        password.attrib.clear()
    return user


def connect_as(root: ET.Element, data: Path, directory: Path) -> Client:
    """A client on ``data`` as the users XML ``root`` says (written to ``directory``)."""
    directory.mkdir()
    ET.ElementTree(root).write(directory / "users.xml")
    (directory / "config.xml").write_text(CONFIG.format(users=directory / "users.xml"))
    return _client(data, directory / "config.xml")


def attempt(client: Client, sql: str, rows: Callable[[Any], Any] = lambda rows: rows) -> list[Any]:
    """``["ok", rows(result rows)]``, or ``["error", the first 300 characters]``."""
    try:
        return ["ok", rows(client.query(sql).result_rows)]
    except Exception as exc:
        return ["error", " ".join(str(exc).split())[:300]]


def run_probe(
    function: str, workdir: Path, env: Mapping[str, str], timeout: float
) -> dict[str, Any]:
    """Run ``function`` ("module:name", taking a work directory and an output path) in a
    subprocess with ``env`` added to this environment less its ``RATEWATCH_`` variables;
    what it wrote as JSON."""
    module, name = function.split(":")
    output = workdir / "result.json"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RATEWATCH_")}
    environment.update(env)
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; from {module} import {name}; {name}(sys.argv[1], sys.argv[2])",
            str(workdir),
            str(output),
        ],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result: dict[str, Any] = json.loads(output.read_text())
    return result
