"""The Node.js client (``clients/js``): its own suite against a real ``ratewatch up``, and
the tarball ``npm pack`` makes, installed into an empty project and imported both ways.

Node and npm are required (the test fails without them, it never skips): the README's single
test command covers the Node client too.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "js"
NAME = "@ratewatch/client"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not on PATH: Node.js 20+ and npm are needed for clients/js")
    return path


def _run(args: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    """Runs ``args`` in a session of its own, so that on a timeout the whole tree (npm, node,
    the service it started) is stopped; fails with the output on a non-zero exit."""
    process = subprocess.Popen(
        args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        pytest.fail(f"{' '.join(args)} timed out after {timeout}s:\n{output[-6000:]}")
    if process.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {process.returncode}:\n{output[-6000:]}")
    return output


@pytest.fixture(scope="module")
def npm() -> str:
    """npm, after a clean install of the pinned devDependencies and a build."""
    _tool("node")
    npm = _tool("npm")
    _run([npm, "ci", "--no-audit", "--no-fund"], PACKAGE, timeout=300)
    _run([npm, "run", "build"], PACKAGE, timeout=300)
    return npm


@pytest.mark.timeout(900)
def test_node_suite_passes_against_a_real_service(npm: str) -> None:
    output = _run(
        [npm, "test"],
        PACKAGE,
        timeout=600,
        env={
            "RATEWATCH_PYTHON": sys.executable,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(PACKAGE.parents[1]), os.environ.get("PYTHONPATH")])
            ),
        },
    )
    assert "# fail 0" in output, output[-4000:]
    assert "# pass " in output, output[-4000:]
    assert "# pass 0\n" not in output, output[-4000:]


ESM_CHECK = """
import { RateWatch, rateLimit, InvalidRequestError, FAIL_OPEN_REASON } from '@ratewatch/client';
const limiter = new RateWatch('rwk_key', { baseUrl: 'http://127.0.0.1:9', onFailOpen() {} });
const result = await limiter.check('user:123', { limit: 100, window: 3600 });
const middleware = typeof rateLimit;
const error = InvalidRequestError.name;
console.log(JSON.stringify({ result, middleware, error, FAIL_OPEN_REASON }));
"""

CJS_CHECK = """
const { RateWatch, rateLimit, InvalidRequestError } = require('@ratewatch/client');
const limiter = new RateWatch('rwk_key', { baseUrl: 'http://127.0.0.1:9', onFailOpen() {} });
limiter.check('user:123', { limit: 100, window: 3600 }).then((result) => {
  const middleware = typeof rateLimit;
  console.log(JSON.stringify({ result, middleware, error: InvalidRequestError.name }));
});
"""

TYPED_CHECK = """
import { RateWatch, type CheckResult } from '@ratewatch/client';
const limiter = new RateWatch('k', { timeout: 500, failOpen: false });
export const check: Promise<CheckResult> = limiter.check('user:1', { limit: 1, window: 60 });
export const resetIn = (result: CheckResult): number => result.resetIn;
"""


@pytest.mark.timeout(900)
def test_npm_pack_makes_an_installable_tarball(npm: str, tmp_path: Path) -> None:
    # The fixture has just built dist/; `prepack` would build it again.
    packed = _pack_json(
        _run(
            [npm, "pack", "--ignore-scripts", "--json", "--pack-destination", str(tmp_path)],
            PACKAGE,
            timeout=300,
        )
    )
    files = {entry["path"] for entry in packed[0]["files"]}
    for needed in (
        "package.json",
        "README.md",
        "dist/esm/index.js",
        "dist/esm/index.d.ts",
        "dist/cjs/index.js",
        "dist/cjs/index.d.ts",
        "dist/cjs/package.json",
    ):
        assert needed in files, sorted(files)
    assert not any(path.startswith(("src/", "test/", "node_modules/")) for path in files), files
    tarball = tmp_path / packed[0]["filename"]

    project = tmp_path / "app"
    project.mkdir()
    (project / "package.json").write_text('{"name": "app", "private": true}\n')
    _run([npm, "install", "--no-audit", "--no-fund", str(tarball)], project, timeout=300)
    installed = json.loads((project / "node_modules/@ratewatch/client/package.json").read_text())
    assert installed["name"] == NAME
    assert not installed.get("dependencies")

    expected = {
        "allowed": True,
        "remaining": 99,
        "resetIn": 3600,
        "retryAfter": None,
        "limit": 100,
        "reason": "client_fail_open",
    }
    (project / "esm.mjs").write_text(ESM_CHECK)
    (project / "cjs.cjs").write_text(CJS_CHECK)
    esm = json.loads(_run(["node", "esm.mjs"], project, timeout=60).strip().splitlines()[-1])
    cjs = json.loads(_run(["node", "cjs.cjs"], project, timeout=60).strip().splitlines()[-1])
    assert esm == {
        "result": expected,
        "middleware": "function",
        "error": "InvalidRequestError",
        "FAIL_OPEN_REASON": "client_fail_open",
    }
    assert cjs == {"result": expected, "middleware": "function", "error": "InvalidRequestError"}

    # The types resolve for an ES module and a CommonJS consumer alike.
    (project / "typed.mts").write_text(TYPED_CHECK)
    (project / "typed.cts").write_text(TYPED_CHECK)
    (project / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "module": "NodeNext",
                    "moduleResolution": "NodeNext",
                    "strict": True,
                    "noEmit": True,
                    "skipLibCheck": True,
                    "typeRoots": [str(PACKAGE / "node_modules" / "@types")],
                    "types": ["node"],
                },
                "files": ["typed.mts", "typed.cts"],
            }
        )
    )
    _run(
        ["node", str(PACKAGE / "node_modules/typescript/bin/tsc"), "-p", "."], project, timeout=300
    )


def _pack_json(output: str) -> list[dict[str, Any]]:
    """The JSON array ``npm pack --json`` prints after the build's own output."""
    start = 0 if output.startswith("[") else output.index("\n[") + 1
    packed: list[dict[str, Any]] = json.loads(output[start:])
    return packed
