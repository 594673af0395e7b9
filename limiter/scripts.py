"""Lua scripts for Redis, read from the ``lua/`` folder of a package.

Every script the service runs in Redis is a file of package data
(``[tool.setuptools.package-data]``), never a string in Python: a file can be read, linted
and diffed as Lua, and importlib.resources finds it in a wheel as well as in a source tree.

A script may be made of several files joined in order: Redis runs a script as one chunk, so
that is how helpers in one file (``prelude.lua``) reach the code of the next ones.
"""

from __future__ import annotations

from importlib import resources

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


def script_source(package: str, *names: str) -> str:
    """The files ``names`` of ``package``'s ``lua/`` folder, joined in order by newlines.
    ValueError if no name is given; FileNotFoundError naming the path of a missing file."""
    if not names:
        raise ValueError(f"a script of package {package!r} needs at least one .lua file")
    folder = resources.files(package) / "lua"
    return "\n".join((folder / name).read_text(encoding="utf-8") for name in names)


def register_script(redis: Redis, package: str, *names: str) -> AsyncScript:
    """The script of ``names`` (see ``script_source``) registered on ``redis``: a call runs
    it by EVALSHA and loads it again if the server lost it (NOSCRIPT), so a restarted Redis
    needs no start-up step."""
    return redis.register_script(script_source(package, *names))
